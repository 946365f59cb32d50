"""The ``detect-train`` and ``detect-evaluate`` subcommands (argument parsing only).

The main CLI (:mod:`snnconv.cli`) adds these subcommands and calls the two ``cmd_*``
functions with what it parsed; this module imports nothing from it.
"""
from __future__ import annotations

import argparse


def add_detection_commands(sub: argparse._SubParsersAction, add_method_arguments) -> None:
    """Register the two subcommands on the CLI's subparsers ``sub``.

    ``add_method_arguments`` is the CLI's shared helper for -T, --sleep-steps, --seeds, ...
    """
    tr = sub.add_parser("detect-train", help="train a YOLO-style source detector (QCFS, clip-floor or ReLU)")
    tr.add_argument("--model", default="yolo_detector")
    tr.add_argument("--dataset", default="mnist_detection", help="mnist_detection, voc2007 or coco2017")
    tr.add_argument("--data-dir", help="MNIST idx folder, VOCdevkit, or the COCO folder")
    tr.add_argument("--dataset-arg", action="append", help="dataset option KEY=VALUE (e.g. train_count=6000, size=64)")
    tr.add_argument("--activation", default="qcfs", choices=["qcfs", "clipfloor", "relu"])
    tr.add_argument("--levels", type=int, default=4)
    tr.add_argument("--backbone", default="vgg", choices=["vgg", "resnet"])
    tr.add_argument("--width", type=int, default=16)
    tr.add_argument("--epochs", type=int, default=8)
    tr.add_argument("--batch-size", type=int, default=64)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--weight-decay", type=float, default=5e-4)
    tr.add_argument("--flip", action="store_true", help="random horizontal flips (natural images; not digits)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--out", required=True, help="output folder (resumes if it holds a checkpoint)")
    tr.add_argument("--no-progress", action="store_true")

    ev = sub.add_parser("detect-evaluate", help="convert a detector checkpoint and report ANN and SNN mAP per step")
    ev.add_argument("checkpoint")
    ev.add_argument("--neuron", default="if")
    add_method_arguments(ev)


def cmd_detect_train(args: argparse.Namespace, dataset_args: dict) -> None:
    """``detect-train``: train (or resume) a detector from the parsed ``args``; ``dataset_args``
    are the ``--dataset-arg`` pairs, parsed by the main CLI.

    Raises:
        SnnconvError: a bad option, dataset, or a checkpoint in ``--out`` from another run.
    """
    from ..distributed import print_main
    from .train import DetectTrainConfig, train_detector

    config = DetectTrainConfig(
        model=args.model, dataset=args.dataset, dataset_args=dataset_args,
        activation=args.activation, levels=args.levels, backbone=args.backbone, width=args.width, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, flip=args.flip, seed=args.seed, device=args.device,
    )
    _, meta = train_detector(config, args.out, args.data_dir, progress=not args.no_progress)
    print_main(f"checkpoint: {args.out}/checkpoint.safetensors (test mAP@0.5 {meta['ann_map50']:.4f}, mAP@[.5:.95] {meta['ann_map']:.4f})")


def cmd_detect_evaluate(args: argparse.Namespace, spec) -> None:
    """``detect-evaluate``: convert a detector checkpoint and report ANN and SNN mAP per step
    for the method ``spec`` (a :class:`snnconv.experiments.RunSpec`).

    Raises:
        SnnconvError: the checkpoint is not a detector's, or the dataset cannot be loaded.
    """
    from ..distributed import print_main
    from .evaluate import evaluate_detector, format_detection_table

    results = evaluate_detector(args.checkpoint, [spec], args.data_dir, args.limit, args.batch_size, progress=not args.no_progress,
                                json_path=args.json, device=args.device)
    print_main(format_detection_table(results))

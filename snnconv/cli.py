"""Command line: argument parsing only; each command calls one library function."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import SnnconvError


def _neuron_options(args) -> dict:
    options = {}
    if args.group_size is not None:
        options["group_size"] = args.group_size if args.group_size == "auto" else int(args.group_size)
    if args.target_steps is not None:
        options["target_steps"] = args.target_steps
    if args.initial_potential is not None:
        options["initial_potential"] = args.initial_potential
    for pair in args.option or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SnnconvError(f"--option takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SnnconvError(f"--seeds takes comma-separated integers, got {text!r}") from None


def _add_method_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-T", "--steps", default="1,2,4,8,16,32", help="comma-separated T values (wake steps for cif)")
    p.add_argument("--sleep-steps", type=int, default=0, help="CIF wake-sleep: sleep steps after T wake steps")
    p.add_argument("--permute", choices=["per-neuron", "per-layer"], help="shuffle spike trains in time (temporal misalignment)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds for stochastic runs (mean and spread reported)")
    p.add_argument("--group-size", help="GN: tau (integer) or 'auto' (tau = ceil(L / --target-steps))")
    p.add_argument("--target-steps", type=int, help="GN with --group-size auto: the T to reach")
    p.add_argument("--initial-potential", type=float, help="v(0) as a fraction of theta (IF, GN, TPP)")
    p.add_argument("--option", action="append", help="other neuron option KEY=VALUE (repeatable)")
    p.add_argument("--calibrate", default="99.9", help="ReLU sources: 'max' or a percentile for the thresholds")
    p.add_argument("--data-dir", help="folder with the dataset files (not needed for digits)")
    p.add_argument("--limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--json", help="write the results JSON here")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snnconv", description="Convert trained ANNs into low-latency spiking networks.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train on scikit-learn digits, convert with IF, print accuracy per T")
    demo.add_argument("--json", help="write the results JSON here")
    demo.add_argument("--epochs", type=int, default=30)

    tr = sub.add_parser("train", help="train a source ANN (QCFS, clip-floor or ReLU)")
    tr.add_argument("--model", default="small_cnn")
    tr.add_argument("--dataset", default="digits")
    tr.add_argument("--data-dir")
    tr.add_argument("--activation", default="qcfs", choices=["qcfs", "clipfloor", "relu"])
    tr.add_argument("--levels", type=int, default=4)
    tr.add_argument("--epochs", type=int, default=10)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--lr", type=float, default=0.05)
    tr.add_argument("--momentum", type=float, default=0.9)
    tr.add_argument("--weight-decay", type=float, default=5e-4)
    tr.add_argument("--decay-thresholds", action="store_true", help="apply weight decay to the clip values lambda too")
    tr.add_argument("--label-smoothing", type=float, default=0.0)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--model-arg", action="append", help="extra model argument KEY=VALUE (e.g. width=16)")
    tr.add_argument("--out", required=True, help="output folder (resumes if it holds a checkpoint)")
    tr.add_argument("--no-progress", action="store_true")

    ev = sub.add_parser("evaluate", help="convert a checkpoint and report ANN and SNN accuracy per T")
    ev.add_argument("checkpoint")
    ev.add_argument("--neuron", default="if")
    _add_method_arguments(ev)

    sub.add_parser("list", help="list registered neurons, models and datasets")

    from .detection.cli import add_detection_commands

    add_detection_commands(sub, _add_method_arguments)
    return parser


def _cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(args.json, epochs=args.epochs)


def _cmd_train(args) -> None:
    from .train import TrainConfig, train

    model_args = {}
    for pair in args.model_arg or []:
        key, _, value = pair.partition("=")
        model_args[key] = json.loads(value) if value else value
    config = TrainConfig(
        model=args.model, dataset=args.dataset, activation=args.activation, levels=args.levels, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        decay_thresholds=args.decay_thresholds, label_smoothing=args.label_smoothing, seed=args.seed, device=args.device,
        model_args=model_args,
    )
    _, meta = train(config, args.out, args.data_dir, progress=not args.no_progress)
    print(f"checkpoint: {args.out}/checkpoint.safetensors (test accuracy {meta['ann_accuracy']:.4f})")


def _cmd_evaluate(args) -> None:
    from .experiments import RunSpec, evaluate_checkpoint, format_table, parse_steps

    spec = RunSpec(args.neuron, parse_steps(args.steps), args.sleep_steps, args.permute, _parse_seeds(args.seeds),
                   _neuron_options(args), args.calibrate)
    results = evaluate_checkpoint(args.checkpoint, [spec], args.data_dir, args.limit, args.batch_size,
                                  progress=not args.no_progress, json_path=args.json, device=args.device)
    print(format_table(results))


def _method_spec(args):
    from .experiments import RunSpec, parse_steps

    return RunSpec(args.neuron, parse_steps(args.steps), args.sleep_steps, args.permute, _parse_seeds(args.seeds),
                   _neuron_options(args), args.calibrate)


def _cmd_detect_train(args) -> None:
    from .detection.cli import cmd_detect_train

    cmd_detect_train(args)


def _cmd_detect_evaluate(args) -> None:
    from .detection.cli import cmd_detect_evaluate

    cmd_detect_evaluate(args, _method_spec(args))


def _cmd_list(args) -> None:
    from . import list_models, list_neurons
    from .data import list_datasets

    print("neurons: " + ", ".join(list_neurons()))
    print("models: " + ", ".join(list_models()))
    print("datasets: " + ", ".join(list_datasets()))


COMMANDS = {"demo": _cmd_demo, "train": _cmd_train, "evaluate": _cmd_evaluate, "list": _cmd_list,
            "detect-train": _cmd_detect_train, "detect-evaluate": _cmd_detect_evaluate}


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except SnnconvError as err:
        if args.debug:
            raise
        print(f"snnconv: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("snnconv: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write the card of a model-zoo entry from its checkpoint, training log and the test sets.

    python bench/zoo_card.py resnet20_qcfs4_cifar10jpeg --data-dir ../shared/data/cifar10

Reads ``snnconv/zoo/NAME/checkpoint.safetensors`` (metadata: training configuration,
per-epoch ANN and clip-limit accuracy, training seconds) and re-measures, on this
machine: the ANN and its clip limit on the 10,000 CIFAR-10 (JPEG-q75) test images and on
the 1,017 test images whose exact pixels ``cifar10_exact_subset.npz`` holds. Writes
``card.md`` beside the checkpoint, and ``card.json`` with the same numbers (the tests
check the card against the checkpoint's metadata).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import platform
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snnconv.activations import clip_limit  # noqa: E402
from snnconv.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from snnconv.data import load_dataset  # noqa: E402
from snnconv.data.registry import Dataset  # noqa: E402
from snnconv.files import write_json, write_text  # noqa: E402
from snnconv.train import accuracy  # noqa: E402
from snnconv.zoo import ZOO_DIR, load_pretrained  # noqa: E402

EXACT_FILE = "cifar10_exact_subset.npz"


def augmentation_text(config: dict) -> str:
    """What the card says after "random crop (padding 4) and flip"."""
    parts = [", AutoAugment (CIFAR-10 policy)" if config.get("autoaugment") else "",
             f", Cutout {config['cutout']}" if config.get("cutout") else ""]
    return "".join(parts) or ", no Cutout, no AutoAugment"


def exact_test_set(data_dir: Path, like: Dataset) -> Dataset:
    """The CIFAR-10 test images stored with exact pixels (1,017), normalised like ``like``."""
    with np.load(data_dir / EXACT_FILE, allow_pickle=False) as archive:
        index = archive["exact_test_index"]
        images = torch.from_numpy(archive["exact_test_images"]).permute(0, 3, 1, 2).contiguous()
        labels = torch.from_numpy(archive["test_labels"][index].astype(np.int64))
    return Dataset("cifar10_exact_test", images, labels, 10, like.mean, like.std)


def jpeg_twins(data_dir: Path, test: Dataset) -> Dataset:
    """The JPEG-q75 copies of the 1,017 exact-pixel test images (same images, lossy pixels)."""
    with np.load(data_dir / EXACT_FILE, allow_pickle=False) as archive:
        index = torch.from_numpy(archive["exact_test_index"].astype(np.int64))
    return Dataset("cifar10_jpeg_twins", test.images[index], test.labels[index], 10, test.mean, test.std)


def scores(model, dataset: Dataset) -> dict:
    x, y = dataset.normalized(), dataset.labels
    limit = clip_limit(model)
    return {"images": len(y), "ann_accuracy": accuracy(model, x, y), "clip_limit_accuracy": None if limit is None else accuracy(limit, x, y)}


def card(name: str, meta: dict, jpeg: dict, exact: dict, twins: dict, command: str) -> str:
    config = meta["train_config"]
    fmt = lambda v: "n/a (ReLU source)" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    lines = [
        f"# {name}", "",
        f"{meta['model']} with {meta['activation']['kind']} activations"
        + (f" (L = {meta['activation']['levels']})" if meta["activation"]["kind"] != "relu" else "")
        + ", trained by `snnconv train` on CIFAR-10 (JPEG-q75), the lossy JPEG copy of CIFAR-10's training set.", "",
        "| measured on | images | ANN | clip limit (IF's large-T limit) |", "|---|---|---|---|",
        f"| CIFAR-10 (JPEG-q75) test set | {jpeg['images']} | {fmt(jpeg['ann_accuracy'])} | {fmt(jpeg['clip_limit_accuracy'])} |",
        f"| CIFAR-10 test images with exact pixels | {exact['images']} | {fmt(exact['ann_accuracy'])} | {fmt(exact['clip_limit_accuracy'])} |",
        f"| the same images from the JPEG-q75 copy | {twins['images']} | {fmt(twins['ann_accuracy'])} | {fmt(twins['clip_limit_accuracy'])} |", "",
    ] + ([
        "For a clip-floor source the clip limit is only what plain IF would approach; the method made for it, CASC's CIF "
        "neuron with wake-sleep conversion, reproduces the ANN itself after its sleep steps.", ""] if meta["activation"]["kind"] == "clipfloor" else []) + [
        f"Measured again here (float32, contiguous tensors). The training run's own evaluation (the checkpoint's metadata; "
        f"channels-last {meta['train_config']['channels_last']}) gave ANN {fmt(meta['ann_accuracy'])}, clip limit "
        f"{fmt(meta.get('clip_limit_accuracy'))}: another memory format rounds differently, so an image within rounding of a "
        "quantisation level may land on the other side.", "",
        "## How it was made", "", "```", command, "```", "",
        "The run's own folder (resumable: it also holds the optimizer state) was then copied here with weights and "
        "metadata only (`python bench/zoo_card.py --import-from RUN_FOLDER NAME`).", "",
        f"- epochs {config['epochs']}, batch {config['batch_size']}, SGD (Nesterov, momentum {config['momentum']}), lr {config['lr']} "
        f"cosine, weight decay {config['weight_decay']} (on lambda too: {config['decay_thresholds']}), "
        f"lambda initialised at the {config.get('threshold_percentile')}th percentile of positive pre-activations, "
        f"bf16 autocast {config['amp']}, channels-last {config['channels_last']}, seed {config['seed']}; augmentation: random crop "
        f"(padding 4) and flip" + augmentation_text(config),
        *([f"- fine-tuned from `{meta['init_from']['checkpoint']}` ({meta['init_from']['model']}, "
           f"{meta['init_from']['activation']['kind']} activations, {meta['init_from']['epochs_done']} epochs, ANN "
           f"{fmt(meta['init_from']['ann_accuracy'])}): every weight copied, lambda too between QCFS and clip-floor sources"
           + ("; each activation's input raised by (φ - φ')·λ/L through the bias before it, so the first weights computed the "
              "source's function exactly (`snnconv/phase_shift.py`)" if meta["init_from"].get("shift_matched") else "")]
          if meta.get("init_from") else []),
        f"- training time {meta.get('train_seconds', 0) / 60:.1f} min (wall, evaluations excluded; the machine was shared with "
        "other work, so this is an upper bound), on " + meta.get("machine", "a 2-core Sapphire Rapids VM (AVX-512, AVX512-BF16), CPU only")
        + f", torch {meta.get('torch', '?')}", "",
        "## Per epoch (CIFAR-10 JPEG-q75 test set)", "", "| epoch | ANN | clip limit | training s |", "|---|---|---|---|",
    ]
    for h in meta["history"]:
        lines.append(f"| {h['epoch']} | {100 * h['test_accuracy']:.2f} | "
                     + ("" if h.get("clip_limit_accuracy") is None else f"{100 * h['clip_limit_accuracy']:.2f}") + f" | {h.get('train_seconds', '')} |")
    lines += ["", f"Card written by `python bench/zoo_card.py {name} --data-dir DIR` from the checkpoint's metadata.", ""]
    return "\n".join(lines)


def training_commands(meta: dict, name: str, log: Path) -> str:
    """zoo/train_resnet20.sh's command (with the run's --cutout / --autoaugment / --lr /
    --init-from where they differ from the script's), then one
    ``EPOCHS=E`` line per extension the training log records ("extending the finished
    N-epoch run to E epochs")."""
    config = meta.get("train_config", {})
    extra = (f" --cutout {config['cutout']}" if config.get("cutout") else "") + (" --autoaugment" if config.get("autoaugment") else "")
    extra += (f" --lr {config['lr']}" if config.get("lr", 0.1) != 0.1 else "") + (f" --init-from {config['init_from']}" if config.get("init_from") else "")
    base = f"bash zoo/train_resnet20.sh {meta['activation']['kind']} zoo/{name} ../shared/data/cifar10{extra}"
    text = log.read_text() if log.exists() else ""
    extensions = re.findall(r"extending the finished (\d+)-epoch run to (\d+) epochs", text)
    first = int(extensions[0][0]) if extensions else config.get("epochs", 30)
    lines = [base if first == 30 else f"EPOCHS={first} {base}"]
    lines += [f"EPOCHS={to} {base}   # extends the finished {done}-epoch run: the cosine restarts" for done, to in extensions]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("--data-dir", required=True, type=Path, help="folder with the CIFAR-10 JPEG npz and the exact-subset npz")
    p.add_argument("--command", help="the training command (default: zoo/train_resnet20.sh's, from the metadata)")
    p.add_argument("--import-from", type=Path, help="first copy RUN_FOLDER's checkpoint (weights + metadata, no optimizer) and train.log into the zoo")
    args = p.parse_args(argv)
    if args.import_from:
        model, meta = load_checkpoint(args.import_from / "checkpoint.safetensors")
        (ZOO_DIR / args.name).mkdir(exist_ok=True)
        save_checkpoint(ZOO_DIR / args.name / "checkpoint.safetensors", model, meta)
        os.chmod(ZOO_DIR / args.name / "checkpoint.safetensors", 0o644)
        shutil.copyfile(args.import_from / "train.log", ZOO_DIR / args.name / "train.log")
    model, meta = load_pretrained(args.name)
    test = load_dataset(meta["dataset"], "test", args.data_dir)
    jpeg, exact = scores(model, test), scores(model, exact_test_set(args.data_dir, test))
    twins = scores(model, jpeg_twins(args.data_dir, test))
    command = args.command or training_commands(meta, args.name, (ZOO_DIR / args.name / "train.log"))
    folder = ZOO_DIR / args.name
    write_text(folder / "card.md", card(args.name, meta, jpeg, exact, twins, command))
    write_json(folder / "card.json", {"name": args.name, "command": command, "cifar10_jpeg_test": jpeg, "cifar10_exact_test": exact, "cifar10_jpeg_same_images": twins,
                                      "epochs_done": meta["epochs_done"], "train_seconds": meta.get("train_seconds"),
                                      "machine": platform.processor() or platform.machine(), "torch": torch.__version__})
    print((folder / "card.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What makes a QCFS source's clip limit fall below its ANN: lambda's initialisation and decay.

Trains MNIST small_cnn QCFS (L = 4) sources for 2 epochs on 20,000 images (the setting of
issue 19) with ``snnconv train``, one per recipe variant, then tabulates each checkpoint's
ANN accuracy and clip-limit accuracy (the network with clip(z, 0, lambda) in place of the
quantiser: what IF converges to at large T) on the 10,000 test images, and its lambdas.

    python bench/qcfs_recipe.py --data-dir ../shared/data/MNIST --runs runs/qcfs_recipe --out bench/results/qcfs_recipe

Runs that already exist in ``--runs`` are resumed (finished ones are only read).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snnconv.activations import QuantizedClip  # noqa: E402
from snnconv.checkpoint import load_checkpoint  # noqa: E402
from snnconv.files import write_json, write_text  # noqa: E402

VARIANTS = {  # name -> (description, extra flags)
    "a": ("lambda = 8 fixed init, no decay on lambda (the old default)", ["--threshold-percentile", "0", "--no-decay-thresholds"]),
    "b": ("lambda = 8 fixed init, decayed", ["--threshold-percentile", "0"]),
    "c": ("lambda = 99.9th percentile, decayed", ["--threshold-percentile", "99.9"]),
    "d": ("lambda = 95th percentile, decayed", ["--threshold-percentile", "95"]),
    "f": ("lambda = 85th percentile, decayed (the new default)", []),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--runs", type=Path, default=Path("runs/qcfs_recipe"))
    p.add_argument("--out", type=Path, required=True, help="output path without extension")
    args = p.parse_args(argv)
    rows = []
    for name, (description, flags) in VARIANTS.items():
        command = ["snnconv", "train", "--model", "small_cnn", "--dataset", "mnist", "--data-dir", args.data_dir, "--epochs", "2",
                   "--train-limit", "20000", "--no-progress", "--out", str(args.runs / name), *flags]
        subprocess.run(command, check=True)
        model, meta = load_checkpoint(args.runs / name / "checkpoint.safetensors")
        rows.append({"variant": name, "description": description, "command": " ".join(command),
                     "ann_accuracy": meta["ann_accuracy"], "clip_limit_accuracy": meta["clip_limit_accuracy"],
                     "lambdas": [round(m.threshold.item(), 3) for m in model.modules() if isinstance(m, QuantizedClip)]})
    lines = ["| recipe | ANN | clip limit | gap | trained lambdas |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['description']} | {100 * r['ann_accuracy']:.2f} | {100 * r['clip_limit_accuracy']:.2f} | "
                     f"{100 * (r['ann_accuracy'] - r['clip_limit_accuracy']):.2f} | {', '.join(f'{v:.2f}' for v in r['lambdas'])} |")
    write_json(args.out.with_suffix(".json"), {"setting": "MNIST small_cnn QCFS L=4, 2 epochs on 20,000 images, 10,000 test images", "rows": rows})
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

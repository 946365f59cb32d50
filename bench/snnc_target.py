"""Bias/potential calibration matching the layer's output (the authors' code) or its
pre-activation (our spec's first reading): accuracy after each, per T.

Usage: python3 bench/snnc_target.py CHECKPOINT DATA_DIR [--limit 2000] [--images 256]
"""
from __future__ import annotations

import argparse

from snnconv import convert, simulate
from snnconv.checkpoint import load_checkpoint
from snnconv.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("data_dir")
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("-T", default="2,4,8")
    args = parser.parse_args()
    model, meta = load_checkpoint(args.checkpoint)
    train, test = (load_dataset(meta["dataset"], split, args.data_dir) for split in ("train", "test"))
    cal = train.normalized(slice(0, args.images))
    x, y = test.normalized(slice(0, args.limit)), test.labels[: args.limit]
    print(f"ANN {100 * float((model(x).argmax(1) == y).double().mean()):.2f}% on {len(y)} test images, {args.images} calibration images")
    print("| T | mse, none | light, output | light, pre-activation | potential, output | potential, pre-activation |")
    print("|---|---|---|---|---|---|")
    for steps in (int(t) for t in args.T.split(",")):
        cells = []
        for mode, target in ((None, "output"), ("light", "output"), ("light", "preactivation"),
                             ("potential", "output"), ("potential", "preactivation")):
            snn = convert(model, "if", calibration=cal, threshold="mse", snn_calibration=mode, calibration_steps=steps,
                          calibration_target=target)
            cells.append(f"{100 * float((simulate(snn, x, steps).mean(0).argmax(1) == y).double().mean()):.2f}")
        print(f"| {steps} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

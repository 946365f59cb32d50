"""Layer-wise conversion error of several methods on one source (why one beats another).

For each spiking layer and T: relative MSE between the ANN activation and the layer's
average spiking output (``snnconv.insight.layerwise_error``), for IF, IF + per-neuron
permutation and TPP with v(0) = 0 and theta/2. Writes OUT.json and OUT.md.

    python bench/layer_error.py --checkpoint runs/digits_qcfs4/checkpoint.safetensors --out bench/results/digits_layer_error
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from snnconv import convert
from snnconv.checkpoint import load_checkpoint
from snnconv.data import load_dataset
from snnconv.files import write_json, write_text
from snnconv.insight import layerwise_error

METHODS = {
    "IF": ("if", {}),
    "IF + permute per-neuron": ("if", {"permute": "per-neuron"}),
    "TPP v0=0": ("tpp", {"initial_potential": 0.0}),
    "TPP v0=theta/2": ("tpp", {"initial_potential": 0.5}),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, default=450, help="first N test images")
    p.add_argument("--steps", default="1,2,4,8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    model, meta = load_checkpoint(args.checkpoint)
    model.eval()
    test = load_dataset(meta["dataset"], "test", args.data_dir)
    x = test.normalized(slice(0, min(args.limit, len(test))))
    steps = [int(t) for t in args.steps.split(",")]
    errors = {}
    for label, (neuron, options) in METHODS.items():
        with torch.no_grad():
            errors[label] = layerwise_error(model, convert(model, neuron, **options), x, steps, seed=args.seed)
    results = {"checkpoint": args.checkpoint, "samples": len(x), "T": steps, "relative_mse": errors,
               "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}
    write_json(Path(args.out + ".json"), results)
    layers = list(next(iter(errors.values())))
    lines = [f"Relative MSE between ANN activation and SNN average output, {meta['dataset']} / {meta['model']}, "
             f"{len(x)} images (columns: layer @ T)", "",
             "| method | " + " | ".join(f"{layer} @ T={t}" for layer in (layers[0], layers[-1]) for t in steps) + " |",
             "|---" * (2 * len(steps) + 1) + "|"]
    for label, per_layer in errors.items():
        cells = [f"{per_layer[layer][i]:.3f}" for layer in (layers[0], layers[-1]) for i in range(len(steps))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    write_text(Path(args.out + ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

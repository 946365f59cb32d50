"""Why a ReLU source converts slowly: each spiking layer's firing rate a/θ under its threshold.

An IF neuron whose ANN activation is a fires at rate a/θ (θ: its layer's threshold, here
the 99.9th percentile of the layer's activations on training images, as the paper-scale
table sets it): a neuron with a/θ < 1/T emits no spike in T steps, and at T steps the
output is a multiple of θ/T. For each spiking layer of each ReLU source, on the first N
test images: θ, the share of active neurons (a > 0), the median a/θ of the active ones,
the share of active neurons below 1/16 and below 1/64 (no spike by T = 16, 64 from the
rate alone), the share above θ (clipped), and the relative MSE between the activation and
the layer's average IF output at ``--steps`` (``snnconv.insight.layerwise_error``: how
the error grows through the layers). Writes OUT.json and OUT.md.

    python bench/relu_rates.py --checkpoints resnet20_relu_cifar10jpeg,resnet20_relu_aa_cifar10jpeg \\
        --data-dir ../shared/data/cifar10 --out bench/results/relu_rates
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snnconv import convert  # noqa: E402
from snnconv.experiments import load_evaluation  # noqa: E402
from snnconv.files import write_json, write_text  # noqa: E402
from snnconv.insight import ann_activations, layerwise_error  # noqa: E402


def share(mask: torch.Tensor) -> float:
    """The fraction of True in ``mask`` (0 when it is empty)."""
    return float(mask.double().mean()) if mask.numel() else 0.0


def layer_rates(model: torch.nn.Module, calibration: torch.Tensor, x: torch.Tensor, threshold: str, steps: list[int]) -> list[dict]:
    """One record per spiking layer of ``convert(model, "if", threshold=...)``: θ, the
    statistics of a/θ over ``x`` and the relative MSE at each T of ``steps`` (module docstring)."""
    snn = convert(model, "if", calibration=calibration, threshold=threshold)
    acts = ann_activations(model, snn, x)
    with torch.no_grad():
        errors = layerwise_error(model, snn, x, steps)
    rows = []
    for name, neuron in snn.spiking_layers():
        theta = neuron.threshold.double()
        rate = (acts[name] / theta).flatten()
        active = rate[rate > 0]
        rows.append({"layer": name, "theta": float(theta.mean()), "active": float((rate > 0).double().mean()),
                     "median_rate": float(active.median()) if len(active) else 0.0,
                     "below_1_16": share(active < 1 / 16), "below_1_64": share(active < 1 / 64), "above_theta": share(active > 1),
                     "relative_mse": dict(zip(map(str, steps), errors[name]))})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", required=True, help="comma-separated ReLU checkpoints or zoo names")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, default=500, help="first N test images")
    p.add_argument("--threshold", default="99.9", help="as convert's threshold= (default the table's 99.9th percentile)")
    p.add_argument("--steps", default="16,64", help="T of the layer-wise error")
    p.add_argument("--out", required=True, type=Path, help="output path without extension")
    args = p.parse_args(argv)
    steps = [int(t) for t in args.steps.split(",")]
    results = {"threshold": args.threshold, "T": steps, "samples": args.limit, "sources": {},
               "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}
    lines = []
    for name in args.checkpoints.split(","):
        model, meta, x, _, calibration = load_evaluation(name, args.data_dir, args.limit, torch.device("cpu"), always_calibrate=True)
        rows = layer_rates(model.eval(), calibration, x, args.threshold, steps)
        results["sources"][name] = rows
        lines += [f"### {name} ({len(x)} test images; θ = {args.threshold} on {len(calibration)} training images)", "",
                  "| layer | θ | active | median a/θ of active | active below 1/16 | below 1/64 | above θ | "
                  + " | ".join(f"rel. MSE T={t}" for t in steps) + " |", "|---" * (7 + len(steps)) + "|"]
        lines += [f"| {r['layer']} | {r['theta']:.3f} | {100 * r['active']:.1f}% | {r['median_rate']:.3f} | "
                  f"{100 * r['below_1_16']:.1f}% | {100 * r['below_1_64']:.1f}% | {100 * r['above_theta']:.2f}% | "
                  + " | ".join(f"{r['relative_mse'][str(t)]:.3f}" for t in steps) + " |" for r in rows]
        lines += ["", f"Median over layers of the median a/θ: {statistics.median(r['median_rate'] for r in rows):.3f}; "
                  f"of the share below 1/16: {100 * statistics.median(r['below_1_16'] for r in rows):.1f}%", ""]
    lines.append(f"Made by: `{results['command']}`")
    write_json(args.out.with_suffix(".json"), results)
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

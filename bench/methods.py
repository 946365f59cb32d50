"""Accuracy per T for several conversion methods on one source checkpoint.

Writes ``OUT.json`` (the results schema plus the command and wall time) and ``OUT.md``
(a markdown table). Presets match the issues' benchmarks:

    gn    IF and GN with tau in {2, 4, L}                      T = 1..32
    tpp   IF, IF + permutation (per-neuron, per-layer), TPP with v(0) = theta/2 and 0,
          mean and spread over seeds                          T = 1..32
    casc  CIF + wake-sleep, T = L, accuracy at every wake + sleep step
    if    IF only                                              T = 1..32

Example (see README "Benchmarks" for every command used there):
    python bench/methods.py --preset gn --checkpoint runs/mnist_qcfs4/checkpoint.safetensors \
        --data-dir ../shared/data/MNIST --out bench/results/mnist_gn
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from snnconv.checkpoint import load_checkpoint
from snnconv.experiments import RunSpec, evaluate_checkpoint
from snnconv.files import write_json, write_text

STEPS = [1, 2, 4, 8, 16, 32]


def preset_specs(preset: str, levels: int, seeds: list[int], sleep_steps: int) -> list[RunSpec]:
    if preset == "if":
        return [RunSpec("if", STEPS)]
    if preset == "gn":
        taus = sorted({2, 4, levels})
        return [RunSpec("if", STEPS)] + [RunSpec("gn", STEPS, options={"group_size": t}) for t in taus]
    if preset == "tpp":
        return [
            RunSpec("if", STEPS),
            RunSpec("if", STEPS, permute="per-neuron", seeds=seeds),
            RunSpec("if", STEPS, permute="per-layer", seeds=seeds),
            RunSpec("tpp", STEPS, seeds=seeds, options={"initial_potential": 0.5}),
            RunSpec("tpp", STEPS, seeds=seeds, options={"initial_potential": 0.0}),
        ]
    if preset == "casc":
        return [RunSpec("cif", [levels], sleep_steps=sleep_steps)]
    raise SystemExit(f"unknown preset {preset!r}")


def label(run: dict) -> str:
    name = run["neuron"].upper()
    if run.get("permute"):
        name += f" + permute {run['permute']}"
    opts = run["options"]
    if "group_size" in opts:
        name = f"GN tau={opts['group_size']}"
    if run["neuron"] == "tpp":
        name += f" v0={'theta/2' if opts.get('initial_potential', 0.5) else '0'}"
    return name


def markdown(results: dict) -> str:
    lines = [f"{results['title']}: ANN {100 * results['ann_accuracy']:.2f}% on {results['samples']} test images", ""]
    runs = results["runs"]
    if runs and runs[0].get("total_steps"):
        run = runs[0]
        steps = run["total_steps"]
        lines += ["| method | " + " | ".join(f"step {s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
        lines.append(f"| CIF+WSC (T={run['wake_steps']}) | " + " | ".join(f"{100 * a:.2f}" for a in run["accuracy"]) + " |")
        return "\n".join(lines) + "\n"
    steps = runs[0]["T"]
    lines += ["| method | latency | " + " | ".join(f"T={t}" for t in steps) + " |", "|---" * (len(steps) + 2) + "|"]
    for run in runs:
        cells = [f"{100 * a:.2f}" + (f" ± {100 * s:.2f}" if s else "") for a, s in zip(run["accuracy"], run["accuracy_std"])]
        latency = "T" if run["latency_steps"] == run["T"] else f"{run['spiking_layers'] + 1}·T"
        lines.append(f"| {label(run)} | {latency} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, choices=["if", "gn", "tpp", "casc"])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, help="first N test images")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--sleep-steps", type=int, default=28)
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    _, meta = load_checkpoint(args.checkpoint)
    levels = meta["activation"]["levels"]
    specs = preset_specs(args.preset, levels, [int(s) for s in args.seeds.split(",")], args.sleep_steps)
    start = time.perf_counter()
    results = evaluate_checkpoint(args.checkpoint, specs, args.data_dir, args.limit, progress=True)
    results["title"] = args.title or f"{meta['dataset']} / {meta['model']} / {meta['activation']['kind']} L={levels}"
    results["command"] = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json(Path(args.out + ".json"), results)
    table = markdown(results)
    write_text(Path(args.out + ".md"), table)
    print(table)


if __name__ == "__main__":
    main()

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
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from snnconv import convert, running_average, simulate
from snnconv.activations import clip_limit
from snnconv.checkpoint import load_checkpoint
from snnconv.data import load_dataset
from snnconv.experiments import RunSpec, evaluate_checkpoint
from snnconv.files import write_json, write_text
from snnconv.train import accuracy

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


@torch.no_grad()
def logit_match(model: torch.nn.Module, x: torch.Tensor, wake_steps: int, sleep_steps: int) -> dict:
    """CIF + wake-sleep against the ANN on ``x``, in float32 and in float64: the largest
    |SNN readout - ANN logit| after each total step, the images still off by more than
    1e-4 at the last step, and the share whose predicted class is the ANN's. Accuracy
    alone could agree by chance; this is the loss-free claim. float64 separates real
    mismatches from float32 rounding at the floor's boundaries (a potential that lands a
    hair below an integer where the ANN's sum lands on it)."""
    result = {"samples": len(x)}
    for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        ann, inputs = copy.deepcopy(model).to(dtype).eval(), x.to(dtype)
        snn = convert(ann, "cif")
        readout = running_average(simulate(snn, inputs, wake_steps, sleep_steps=sleep_steps), wake_steps)
        logits = ann(inputs)
        error = (readout - logits).abs().flatten(2).amax(2)  # [steps, images]
        result[name] = {"max_abs_logit_error": error.amax(1).tolist(), "images_off": int((error[-1] > 1e-4).sum()),
                        "same_prediction": float((readout[-1].argmax(1) == logits.argmax(1)).double().mean())}
    return result


def label(run: dict) -> str:
    name = run["neuron"].upper()
    if run.get("permute"):
        name += f" + permute {run['permute']}"
    opts = run["options"]
    if "group_size" in opts:
        name = f"GN tau={opts['group_size']}"
    if run["neuron"] == "tpp":
        name += f" v0={'theta/2' if opts.get('initial_potential', 0.0) else '0'}"
    return name


def markdown(results: dict) -> str:
    lines = [f"{results['title']}: ANN {100 * results['ann_accuracy']:.2f}% on {results['samples']} test images"
             + (f"; the same ANN with clip instead of quantisation (IF's large-T limit): {100 * results['relaxed_ann_accuracy']:.2f}%"
                if "relaxed_ann_accuracy" in results else ""), ""]
    runs = results["runs"]
    if runs and runs[0].get("total_steps"):
        # CIF+WSC: accuracy at selected total (wake + sleep) steps, and the first step at
        # which the SNN's accuracy equals the ANN's.
        run = runs[0]
        wake, acc, ann = run["wake_steps"], run["accuracy"], results["ann_accuracy"]
        total = len(acc)
        shown = sorted({s for s in (1, wake // 2, wake, wake + 1, wake + 2, wake + 4, wake + 8, wake + 16, total) if 1 <= s <= total})
        # the step from which the accuracy equals the ANN's at every later step
        reached = next((i + 1 for i in range(total) if all(abs(a - ann) < 1e-12 for a in acc[i:])), None)
        lines += ["| method | " + " | ".join(f"step {s}" for s in shown) + " | = ANN from step |",
                  "|---" * (len(shown) + 2) + "|"]
        lines.append(f"| CIF+WSC (T={wake}, S={run['sleep_steps']}) | " + " | ".join(f"{100 * acc[s - 1]:.2f}" for s in shown)
                     + f" | {reached if reached else 'not reached'} |")
        match = results.get("logit_match")
        if match:
            lines += ["", f"Against the ANN's logits on the first {match['samples']} images:"]
            for name in ("float32", "float64"):
                errors = match[name]["max_abs_logit_error"]
                exact = next((i + 1 for i in range(total) if max(errors[i:]) <= 1e-4), None)
                lines.append(f"- {name}: max |readout - logit| {errors[wake - 1]:.3g} after the wake steps, {errors[-1]:.3g} "
                             f"after step {total} ({match[name]['images_off']} images off by more than 1e-4); <= 1e-4 for all "
                             f"from step {exact if exact else 'never'}; same class as the ANN for "
                             f"{100 * match[name]['same_prediction']:.2f}%.")
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
    p.add_argument("--checkpoint", required=True, help="source checkpoint (ignored with --redraw)")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, help="first N test images")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--sleep-steps", type=int, default=28)
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True, help="output path without extension")
    p.add_argument("--redraw", action="store_true", help="only rewrite OUT.md from OUT.json")
    p.add_argument("--logit-match-only", action="store_true", help="casc: only redo the logit comparison in OUT.json")
    args = p.parse_args(argv)
    if args.logit_match_only:
        results = json.loads(Path(args.out + ".json").read_text())
        model, meta = load_checkpoint(args.checkpoint)
        test = load_dataset(meta["dataset"], "test", args.data_dir)
        results["logit_match"] = logit_match(model, test.normalized(slice(0, min(results["samples"], 200))),
                                             meta["activation"]["levels"], args.sleep_steps)
        write_json(Path(args.out + ".json"), results)
        write_text(Path(args.out + ".md"), markdown(results))
        print(markdown(results))
        return
    if args.redraw:
        results = json.loads(Path(args.out + ".json").read_text())
        if results["activation"]["kind"] != "qcfs":
            results.pop("relaxed_ann_accuracy", None)
        write_text(Path(args.out + ".md"), markdown(results))
        return
    _, meta = load_checkpoint(args.checkpoint)
    levels = meta["activation"]["levels"]
    specs = preset_specs(args.preset, levels, [int(s) for s in args.seeds.split(",")], args.sleep_steps)
    start = time.perf_counter()
    results = evaluate_checkpoint(args.checkpoint, specs, args.data_dir, args.limit, progress=True)
    model, _ = load_checkpoint(args.checkpoint)
    test = load_dataset(meta["dataset"], "test", args.data_dir)
    n = len(test) if args.limit is None else min(args.limit, len(test))
    if meta["activation"]["kind"] == "qcfs":  # IF/GN sources; CIF's limit is exact, not relaxed
        results["relaxed_ann_accuracy"] = accuracy(clip_limit(model), test.normalized(slice(0, n)), test.labels[:n])
    if args.preset == "casc":
        model.eval()
        results["logit_match"] = logit_match(model, test.normalized(slice(0, min(n, 200))), levels, args.sleep_steps)
    results["title"] = args.title or f"{meta['dataset']} / {meta['model']} / {meta['activation']['kind']} L={levels}"
    results["command"] = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json(Path(args.out + ".json"), results)
    table = markdown(results)
    write_text(Path(args.out + ".md"), table)
    print(table)


if __name__ == "__main__":
    main()

"""What the temporal-misalignment shuffle costs, before and after the Fisher-Yates change.

Two measurements, each interleaved (every repetition runs each contender once, in an
order rotated from one repetition to the next) after one warm-up round; medians, and
paired ratios within a repetition, of wall time and of the process's CPU time
(``time.process_time``: with one thread, the time the shuffle itself took, which the
training job that shares the 2 cores does not inflate by preempting it):

* **one window** ``[T, 128 / T, 16, 32, 32]`` of 0/1 spikes (ResNet-20's widest layer;
  8 MiB of float32 at every T, the size the engine's CPU chunks aim for): the per-neuron shuffle as shipped
  (``snnconv.engine.permute_window``, Fisher-Yates over time) against the argsort of
  per-element keys it replaced; the per-layer shuffle as shipped (argsort of T keys per
  sample) against the argsort of those keys expanded to the window; the IF neuron on
  the same window for scale.
* **end to end**: ``simulate`` of a ResNet-20 (``--checkpoint`` or seeded random
  weights, see bench/speed.py) at T = ``--steps`` without permutation, with the shipped
  per-neuron shuffle, and with the argsort shuffle patched in.

    python bench/permutation.py --out bench/results/permutation
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402

import snnconv.engine  # noqa: E402
from snnconv import convert, simulate  # noqa: E402
from snnconv.engine import permute_window  # noqa: E402
from snnconv.functional import if_window  # noqa: E402


def argsort_shuffle(window: torch.Tensor, mode: str, generator: torch.Generator | None) -> torch.Tensor:
    """The shuffle before this change: argsort of uniform keys along time, expanded to
    every element for per-layer."""
    steps, batch = window.shape[:2]
    if mode == "per-neuron":
        keys = torch.rand(window.shape, generator=generator, device=window.device)
    else:
        keys = torch.rand((steps, batch), generator=generator, device=window.device)
        keys = keys.reshape(steps, batch, *([1] * (window.dim() - 2))).expand_as(window)
    return window.gather(0, keys.argsort(dim=0))


def interleave(contenders: dict, reps: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per call for each contender, one warm-up round then ``reps`` rotated rounds."""
    names = list(contenders)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps + 1):
        for n in names[rep % len(names):] + names[: rep % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            contenders[n]()
            if rep:
                wall[n].append(time.perf_counter() - start)
                cpu[n].append(time.process_time() - start_cpu)
    return wall, cpu


def summarise(times: tuple[dict[str, list[float]], dict[str, list[float]]], reference: str) -> list[dict]:
    wall, cpu = times
    return [{"contender": n, "median_ms": 1000 * statistics.median(wall[n]),
             "ratio": statistics.median(a / b for a, b in zip(wall[n], wall[reference])),
             "cpu_median_ms": 1000 * statistics.median(cpu[n]),
             "cpu_ratio": statistics.median(a / b for a, b in zip(cpu[n], cpu[reference]))} for n in wall]


def window_rows(steps: int, reps: int, generator: torch.Generator) -> list[dict]:
    window = (torch.rand(steps, 128 // steps, 16, 32, 32, generator=generator) < 0.3).float()
    drive = torch.rand(window.shape, generator=generator)
    theta = torch.tensor(1.0)
    contenders = {
        "per-neuron, argsort of keys (before)": lambda: argsort_shuffle(window, "per-neuron", generator),
        "per-neuron, Fisher-Yates (shipped)": lambda: permute_window(window, "per-neuron", generator),
        "per-layer, argsort of expanded keys (before)": lambda: argsort_shuffle(window, "per-layer", generator),
        "per-layer, argsort of T keys (shipped)": lambda: permute_window(window, "per-layer", generator),
        "IF neuron, same window": lambda: if_window(drive, theta),
    }
    return summarise(interleave(contenders, reps), "IF neuron, same window")


def simulation_rows(model: torch.nn.Module, x: torch.Tensor, steps: int, reps: int) -> list[dict]:
    snn = convert(model, "if")

    def before():
        with mock.patch.object(snnconv.engine, "permute_window", argsort_shuffle):
            simulate(snn, x, steps, permute="per-neuron", seed=0)

    contenders = {
        "IF, no permutation": lambda: simulate(snn, x, steps),
        "IF + per-neuron, argsort (before)": before,
        "IF + per-neuron, Fisher-Yates (shipped)": lambda: simulate(snn, x, steps, permute="per-neuron", seed=0),
        "IF + per-layer (shipped)": lambda: simulate(snn, x, steps, permute="per-layer", seed=0),
    }
    return summarise(interleave(contenders, reps), "IF, no permutation")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--window-steps", default="2,8,64", help="T of the window measurements")
    p.add_argument("--steps", type=int, default=8, help="T of the end-to-end simulation")
    p.add_argument("--batch", type=int, default=64, help="images in the end-to-end simulation")
    p.add_argument("--checkpoint", help="a trained ResNet-20 checkpoint (default: seeded random weights)")
    p.add_argument("--data-dir", help="CIFAR-10 folder: use its first test images (default: N(0, 1) images)")
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    load_before = os.getloadavg()
    windows = {t: window_rows(t, args.reps, generator) for t in (int(s) for s in args.window_steps.split(","))}
    x, input_desc = speed.load_input(args.batch, args.data_dir, 0)
    model, source_desc = speed.build_source("resnet20", args.checkpoint, x, 0)
    simulation = simulation_rows(model, x, args.steps, args.reps)
    results = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
               "torch": torch.__version__, "threads": args.threads, "reps": args.reps, "load_before": load_before,
               "load_after": os.getloadavg(), "windows": windows, "simulation": simulation,
               "simulation_input": input_desc, "simulation_source": source_desc, "simulation_steps": args.steps}
    lines = [f"Temporal permutation cost, {args.threads} thread(s), median of {args.reps} interleaved runs; "
             f"load {load_before[0]:.1f} -> {results['load_after'][0]:.1f}. Command: `{results['command']}`", "",
             "One window [T, 128 / T, 16, 32, 32] of 0/1 spikes (ratio: paired median of time / IF on the same window):"]
    for clock, ms, ratio in (("wall", "median_ms", "ratio"), ("CPU", "cpu_median_ms", "cpu_ratio")):
        lines += ["", f"{clock} time:", "", "| contender | " + " | ".join(f"T={t}: ms | x IF" for t in windows) + " |",
                  "|---" + "|---|---" * len(windows) + "|"]
        for i, row in enumerate(next(iter(windows.values()))):
            cells = " | ".join(f"{w[i][ms]:.1f} | {w[i][ratio]:.2f}" for w in windows.values())
            lines.append(f"| {row['contender']} | {cells} |")
    lines += ["", f"End to end: simulate() of ResNet-20 ({source_desc}) on {input_desc}, T = {args.steps} "
              "(ratio: paired median of time / IF without permutation):", "",
              "| contender | wall ms | x IF | CPU ms | x IF |", "|---|---|---|---|---|"]
    lines += [f"| {r['contender']} | {r['median_ms']:.0f} | {r['ratio']:.2f} | {r['cpu_median_ms']:.0f} | {r['cpu_ratio']:.2f} |"
              for r in simulation]
    speed.write(args.out, results, "\n".join(lines))


if __name__ == "__main__":
    main()

"""What TPP's random draws cost, and what the 16-bit draws of ``snnconv.functional.tpp`` save.

On one window ``[T, batch, C, H, W]`` (a vgg6-sized layer by default), interleaved,
median of ``--reps``:

* the draws alone: float32 ``uniform_`` (one 32-bit mt19937 draw per value, what
  ``torch.rand`` does) against ``uniform_levels`` (four 16-bit values per 64-bit draw),
  and the same blocks filled by numpy's SFC64 generator instead of mt19937 (measured as
  an alternative, not shipped: see the README);
* the whole neuron: ``tpp_window`` as shipped, the same phase 2 fed by float32 uniforms
  (the implementation before this change, kept here as the reference), and the IF
  neuron on the same window for scale.

    python bench/tpp_draws.py --out bench/results/tpp_draws
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # noqa: E402

from snnconv.functional import TPPParams, if_window, tpp_window  # noqa: E402
from snnconv.functional.tpp import _BLOCK_WORDS, _thread_pool, uniform_levels  # noqa: E402


def sfc64_levels(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """``uniform_levels`` with numpy's SFC64 in place of mt19937: same blocks, same threads."""
    count = math.prod(shape)
    words = np.empty((count + 3) // 4, dtype=np.int64)
    starts = range(0, words.size, _BLOCK_WORDS)
    seeds = torch.randint(0, (1 << 63) - 1, (len(starts),), generator=generator, dtype=torch.int64).tolist()
    workers = torch.get_num_threads()

    def fill(first: int) -> None:
        for start, seed in zip(starts[first::workers], seeds[first::workers]):
            stop = min(start + _BLOCK_WORDS, words.size)
            words[start:stop] = np.random.SFC64(seed).random_raw(stop - start).view(np.int64)

    for done in [_thread_pool(workers).submit(fill, i) for i in range(min(workers, len(starts)))]:
        done.result()
    return torch.from_numpy(words).view(torch.int16)[:count].view(shape)


def tpp_float_uniforms(x: torch.Tensor, threshold: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The previous phase 2: one float32 uniform per neuron and slot, drawn into ``x``."""
    steps = x.shape[0]
    owed = x.sum(0).div_(threshold)
    noise = x.uniform_(0.0, 1.0, generator=generator)
    probability = torch.empty_like(owed)
    for k in range(steps):
        torch.div(owed, steps - k, out=probability)
        owed.sub_(torch.lt(noise[k], probability, out=noise[k]))
    return noise.mul_(threshold)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="8,64,64,32,32", help="T,batch,C,H,W of the window")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(shape).mul_(0.5).add_(0.3)  # about half the neurons owe spikes
    theta = torch.tensor(1.0)
    floats = torch.empty(shape)
    contenders = {
        "draws: float32 uniform_ (1 per value)": lambda buf: floats.uniform_(0.0, 1.0, generator=generator),
        "draws: uniform_levels (16-bit, 4 per 64-bit word)": lambda buf: uniform_levels(shape, generator),
        "draws: same blocks from numpy SFC64 (not shipped)": lambda buf: sfc64_levels(shape, generator),
        "TPP, float32 uniforms (before)": lambda buf: tpp_float_uniforms(buf, theta, generator),
        "TPP, 16-bit draws (shipped)": lambda buf: tpp_window(buf, theta, TPPParams(), generator, inplace=True),
        "IF (same window)": lambda buf: if_window(buf, theta, inplace=True),
    }
    buffers = {n: source.clone() for n in contenders}
    times: dict[str, list[float]] = {n: [] for n in contenders}
    load_before = os.getloadavg()
    for rep in range(args.reps + 1):  # the first round is a warm-up
        names = list(contenders)
        for n in names[rep % len(names):] + names[: rep % len(names)]:
            buffers[n].copy_(source)
            start = time.perf_counter()
            contenders[n](buffers[n])
            if rep:
                times[n].append(time.perf_counter() - start)
    if_times = times["IF (same window)"]
    rows = [{"contender": n, "median_ms": 1000 * statistics.median(t),
             "ratio_to_if": statistics.median(a / b for a, b in zip(t, if_times))} for n, t in times.items()]
    results = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
               "torch": torch.__version__, "threads": args.threads, "shape": shape, "reps": args.reps,
               "load_before": load_before, "load_after": os.getloadavg(), "rows": rows, "seconds": times}
    lines = [f"TPP's random draws on a window {list(shape)} (float32), {args.threads} threads, median of {args.reps} "
             f"interleaved runs; load {load_before[0]:.1f} -> {results['load_after'][0]:.1f}", "",
             "| contender | ms | x IF on the same window (paired median) |", "|---|---|---|"]
    lines += [f"| {r['contender']} | {r['median_ms']:.1f} | {r['ratio_to_if']:.2f} |" for r in rows]
    speed.write(args.out, results, "\n".join(lines))


if __name__ == "__main__":
    main()

"""How the samples per chunk change the per-step cost on CPU (what ``CPU_WINDOW_BYTES`` is set from).

For each network and T, ``simulate`` with ``window_bytes`` set so that a chunk holds
exactly c samples (c = 1, 2, 4, ... up to the batch), interleaved with T ANN forward
passes, median of ``--reps`` paired ratios to T x ANN. The table also gives the size of
the largest float32 window of a chunk, which is what the default caps.

    python bench/chunking.py --data-dir ../shared/data/cifar10 \\
        --checkpoint vgg6=runs/cifar_qcfs4/checkpoint.safetensors --out bench/results/chunking
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # noqa: E402

from snnconv import convert, simulate  # noqa: E402
from snnconv.engine import CPU_WINDOW_BYTES, _largest_activation  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vgg6,resnet20")
    p.add_argument("--steps", default="4,8,32")
    p.add_argument("--neuron", default="if")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--data-dir")
    p.add_argument("--checkpoint", action="append", default=[], help="MODEL=PATH")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, input_desc = speed.load_input(args.batch, args.data_dir, 0)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    chunks = [c for c in (1, 2, 4, 8, 16, 32, 64, 128, 256) if c <= args.batch]
    rows = []
    load_before = os.getloadavg()
    for name in args.models.split(","):
        model, source = speed.build_source(name, checkpoints.get(name), x, 0)
        snn = convert(model, args.neuron, **speed.NEURON_OPTIONS[args.neuron])
        with torch.no_grad():
            for steps in [int(s) for s in args.steps.split(",")]:
                window = _largest_activation(snn, x) * steps * 4  # float32 bytes per sample
                runs = {c: (lambda t, c=c: simulate(snn, x, t, window_bytes=c * window)) for c in chunks}
                runs["ann"] = lambda t: [model(x) for _ in range(t)]
                timed = speed.race(runs, steps, args.reps, warmup=1)  # interleaved, paired ratios to T x ANN
                for c in chunks:
                    rows.append({"model": name, "T": steps, "samples_per_chunk": c, "window_mib": c * window / 2**20,
                                 "ratio_to_ann": timed[c]["ratio_to_ann"], "source": source})
                best = min((r for r in rows if r["model"] == name and r["T"] == steps), key=lambda r: r["ratio_to_ann"])
                print(f"{name} T={steps}: best {best['samples_per_chunk']} samples per chunk "
                      f"({best['window_mib']:.1f} MiB window), {best['ratio_to_ann']:.3f} x T·ANN", flush=True)
    results = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
               "torch": torch.__version__, "threads": args.threads, "batch": args.batch, "neuron": args.neuron,
               "input": input_desc, "reps": args.reps, "cpu_window_bytes": CPU_WINDOW_BYTES,
               "load_before": load_before, "load_after": os.getloadavg(), "rows": rows}
    lines = [f"Per-step cost of our {args.neuron} SNN against samples per chunk, x T·ANN (paired median of {args.reps}), "
             f"batch {args.batch}, {args.threads} threads; the largest float32 window of a chunk in brackets (MiB). "
             f"Load {load_before[0]:.1f} -> {results['load_after'][0]:.1f}.", "",
             "| network | T | " + " | ".join(f"{c}/chunk" for c in chunks) + " |", "|---|---|" + "---|" * len(chunks)]
    for name in args.models.split(","):
        for steps in [int(s) for s in args.steps.split(",")]:
            cells = [f"{r['ratio_to_ann']:.2f} ({r['window_mib']:.1f})" for r in rows if r["model"] == name and r["T"] == steps]
            lines.append(f"| {name} | {steps} | " + " | ".join(cells) + " |")
    speed.write(args.out, results, "\n".join(lines))


if __name__ == "__main__":
    main()

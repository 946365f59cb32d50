"""Time to accuracy: how long each converter takes to reach the ANN's accuracy minus 1 point.

For one trained checkpoint and the first ``--limit`` test images:

1. ANN accuracy on those images; target = ANN - ``--margin`` points (1 by default).
2. Accuracy at every T for each of our methods on the checkpoint as it is (IF, GN, TPP;
   CIF + wake-sleep for clip-floor sources) and for SpikingJelly 2.0.0's converter
   (``FXConverter(RateCodingRecipe)``) on the same weights with every QCFS/clip-floor
   activation replaced by ReLU (what its converter accepts), calibrated with ``max`` and
   with ``99.9%`` on the first ``--calibration`` training images. The smallest T at which
   each reaches the target is read off one causal simulation (running average of the
   outputs, every step); TPP depends on T as a whole and is simulated per T.
3. The wall time of the run each needs: the ``--limit`` images simulated for exactly that
   T (our ``simulate``; SpikingJelly stepped T times as its examples do, and in its
   multi-step mode), the same batches, the same threads, interleaved, median of
   ``--reps``. The best of each side is compared.

Informational row ``SJ, thresholds = lambda``: SpikingJelly's network with its scales set
to the source's clip values lambda (our thresholds) and its v(0) = 0, i.e. the same spikes
as our ``if`` with initial_potential = 0: it separates what the thresholds buy from
what the half-threshold start (QCFS's phi) buys.

    python bench/time_to_accuracy.py --checkpoint /work/main/runs/mnist_qcfs4/checkpoint.safetensors \
        --data-dir ../shared/data/MNIST --limit 1000 --out bench/results/tta_mnist_qcfs4
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sj_bridge  # noqa: E402

from snnconv import convert, simulate  # noqa: E402
from snnconv.checkpoint import load_checkpoint  # noqa: E402
from snnconv.data import load_dataset  # noqa: E402
from snnconv.metrics import correct_per_step  # noqa: E402


def batches(n: int, size: int):
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


@torch.no_grad()
def accuracy_curve(run, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int) -> list[float]:
    """Accuracy after every step 1..steps of a causal run ``run(xb, steps) -> [steps, b, classes]``."""
    correct = torch.zeros(steps, dtype=torch.long)
    for part in batches(len(y), batch):
        correct += correct_per_step(run(x[part], steps), y[part])
    return (correct.double() / len(y)).tolist()


def first_reaching(curve: list[float], target: float) -> int | None:
    return next((t + 1 for t, a in enumerate(curve) if a >= target), None)


@torch.no_grad()
def timed(runs: dict, x: torch.Tensor, batch: int, reps: int) -> dict[str, float]:
    """Median wall time of each ``run()`` over all images (in ``batch`` batches), interleaved."""
    parts = batches(len(x), batch)
    times: dict[str, list[float]] = {n: [] for n in runs}
    for n, run in runs.items():  # warm-up
        run(x[parts[0]])
    for rep in range(reps):
        names = list(runs)
        for n in names[rep % len(names):] + names[: rep % len(names)]:
            start = time.perf_counter()
            for part in parts:
                runs[n](x[part])
            times[n].append(time.perf_counter() - start)
    return {n: statistics.median(v) for n, v in times.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--limit", type=int, default=1000, help="first N test images")
    p.add_argument("--calibration", type=int, default=512, help="training images for SpikingJelly's calibration")
    p.add_argument("--margin", type=float, default=1.0, help="target = ANN accuracy - margin (points)")
    p.add_argument("--max-steps", type=int, default=256, help="longest simulation (SpikingJelly and our causal methods)")
    p.add_argument("--tpp-steps", default="1,2,4,8,16,32")
    p.add_argument("--sleep-steps", type=int, default=28, help="CIF: sleep steps after T = L wake steps")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", required=True, help="output path without extension")
    return p.parse_args(argv)


@torch.no_grad()
def ann_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    return float((torch.cat([model(x[s]) for s in batches(len(y), batch)]).argmax(-1) == y).double().mean())


def our_rows(model: torch.nn.Module, kind: str, levels: int, x: torch.Tensor, y: torch.Tensor, target: float,
             args: argparse.Namespace) -> list[dict]:
    """IF, GN (tau = 2 and L) and TPP on a quantised source, and CIF + wake-sleep on a clip-floor one.
    Each row: label, side, T, accuracy at each T, the T needed to reach ``target``, and
    ``make_run(T)`` (the run to time at that T)."""
    rows: list[dict] = []

    def causal(label: str, snn, steps: int) -> None:
        curve = accuracy_curve(lambda xb, t: simulate(snn, xb, t), x, y, steps, args.batch)
        rows.append({"label": label, "side": "ours", "T": list(range(1, steps + 1)), "accuracy": curve,
                     "needed": first_reaching(curve, target), "make_run": lambda t, s=snn: (lambda xb: simulate(s, xb, t))})

    if kind in ("qcfs", "clipfloor"):
        causal("ours IF", convert(model, "if"), args.max_steps)
        for tau in sorted({2, levels}):
            causal(f"ours GN tau={tau}", convert(model, "gn", group_size=tau), min(args.max_steps, 64))
        rows.append(tpp_row(convert(model, "tpp"), x, y, target, args))
    if kind == "clipfloor":
        rows.append(cif_row(convert(model, "cif"), levels, x, y, target, args))
    return rows


def tpp_row(tpp, x: torch.Tensor, y: torch.Tensor, target: float, args: argparse.Namespace) -> dict:
    """TPP depends on T as a whole (not causal): one simulation per T of ``--tpp-steps``, up to the first that reaches ``target``."""
    tpp_steps = [int(t) for t in args.tpp_steps.split(",")]
    accs, needed = [], None
    for t in tpp_steps:
        accs.append(accuracy_curve(lambda xb, s: simulate(tpp, xb, s, seed=0), x, y, t, args.batch)[-1])
        if accs[-1] >= target:
            needed = t
            break
    return {"label": "ours TPP (seed 0)", "side": "ours", "T": tpp_steps[: len(accs)], "accuracy": accs, "needed": needed,
            "make_run": lambda t: (lambda xb: simulate(tpp, xb, t, seed=0))}


def cif_row(cif, levels: int, x: torch.Tensor, y: torch.Tensor, target: float, args: argparse.Namespace) -> dict:
    """CIF after T = L wake steps, by total step (wake + sleep); no readout before the wake phase ends."""
    total = levels + args.sleep_steps
    curve = accuracy_curve(lambda xb, t: simulate(cif, xb, levels, sleep_steps=t - levels), x, y, total, args.batch)
    curve = [a if t + 1 >= levels else None for t, a in enumerate(curve)]

    def cif_run(t):
        return lambda xb: simulate(cif, xb, levels, sleep_steps=t - levels)

    needed = next((t + 1 for t, a in enumerate(curve) if t + 1 >= levels and a >= target), None)
    return {"label": f"ours CIF+WSC (T={levels} wake + sleep)", "side": "ours", "T": list(range(1, total + 1)),
            "accuracy": curve, "needed": needed, "make_run": cif_run}


def spikingjelly_rows(model: torch.nn.Module, meta: dict, x: torch.Tensor, y: torch.Tensor, target: float,
                      args: argparse.Namespace) -> tuple[list[dict], str]:
    """SpikingJelly 2.0.0 on the ReLU copy of the source, calibrated with max and 99.9%, plus
    the informational row with its thresholds set to the source's lambda; each row also has
    ``make_run_multi`` (its multi-step mode). Returns (rows, description)."""
    if not sj_bridge.available():
        print("spikingjelly not installed (optional benchmark dependency): only our rows")
        return [], "not installed"
    from spikingjelly.activation_based import functional

    train = load_dataset(meta["dataset"], "train", args.data_dir)
    calibration = train.normalized(slice(0, args.calibration))
    relu = sj_bridge.relu_copy(model)
    rows: list[dict] = []

    def sj_row(label: str, net) -> None:
        multi = sj_bridge.convert(relu, calibration[:8], "Max")  # a second copy for multi-step mode
        multi.load_state_dict(net.state_dict())
        functional.set_step_mode(multi, "m")

        def run_multi(t):
            def run(xb):
                functional.reset_net(multi)
                return multi(xb.unsqueeze(0).expand(t, *xb.shape))
            return run

        curve = accuracy_curve(lambda xb, t: sj_bridge.simulate(net, xb, t), x, y, args.max_steps, args.batch)
        rows.append({"label": label, "side": "sj", "T": list(range(1, args.max_steps + 1)), "accuracy": curve,
                     "needed": first_reaching(curve, target), "thresholds": sj_bridge.thresholds(net),
                     "make_run": lambda t: (lambda xb: sj_bridge.simulate(net, xb, t)), "make_run_multi": run_multi})

    for mode in ("Max", "99.9%"):
        sj_row(f"SJ {mode}", sj_bridge.convert(relu, calibration, mode))
    matched = sj_bridge.convert(relu, calibration, "Max")
    sj_bridge.match_thresholds(matched, convert(model, "if"))
    sj_row("SJ, thresholds = lambda (info)", matched)
    desc = f"spikingjelly 2.0.0 FXConverter(RateCodingRecipe), QCFS -> ReLU, calibrated on {args.calibration} train images"
    return rows, desc


def time_rows(rows: list[dict], x: torch.Tensor, args: argparse.Namespace) -> None:
    """Wall time of the run each row needs, interleaved (adds seconds, seconds_multistep, best_seconds, timed_steps).
    A SpikingJelly row that never reaches the target is timed at its longest run: a
    lower bound on its time to accuracy (marked as such)."""
    runs = {}
    for r in rows:
        steps = r["needed"] or (max(r["T"]) if r["side"] == "sj" else None)
        r["timed_steps"] = steps
        if steps is not None:
            runs[r["label"]] = r["make_run"](steps)
            if "make_run_multi" in r:
                runs[r["label"] + " [multi-step]"] = r["make_run_multi"](steps)
    seconds = timed(runs, x, args.batch, args.reps) if runs else {}
    for r in rows:
        r["seconds"] = seconds.get(r["label"])
        r["seconds_multistep"] = seconds.get(r["label"] + " [multi-step]")
        r["best_seconds"] = min((s for s in (r["seconds"], r["seconds_multistep"]) if s is not None), default=None)
        r.pop("make_run"), r.pop("make_run_multi", None)


def summarize(rows: list[dict], max_steps: int) -> dict:
    """The fastest row of each side that reaches the target, and SpikingJelly / ours wall time."""
    def best(side: str, reached: bool) -> dict | None:
        cands = [r for r in rows if r["side"] == side and r["best_seconds"] is not None and "(info)" not in r["label"]
                 and (r["needed"] is not None) == reached]
        return min(cands, key=lambda r: r["best_seconds"], default=None)

    ours, theirs = best("ours", True), best("sj", True)
    summary = {"ours_best": ours and ours["label"], "sj_best": theirs and theirs["label"],
               "speedup": (theirs["best_seconds"] / ours["best_seconds"]) if ours and theirs else None,
               "speedup_is_lower_bound": False}
    if ours and not theirs:  # no SpikingJelly calibration got there: bound it by its longest run
        bound = best("sj", False)
        if bound:
            summary.update(sj_best=bound["label"], speedup=bound["best_seconds"] / ours["best_seconds"], speedup_is_lower_bound=True,
                           note=f"SpikingJelly did not reach the target within T={max_steps}; its time at T={max_steps} "
                                "is a lower bound on its time to accuracy")
    return summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg()

    model, meta = load_checkpoint(args.checkpoint)
    kind, levels = meta["activation"]["kind"], meta["activation"]["levels"]
    test = load_dataset(meta["dataset"], "test", args.data_dir)
    n = min(args.limit, len(test))
    x, y = test.normalized(slice(0, n)), test.labels[:n]
    ann_acc = ann_accuracy(model, x, y, args.batch)
    relu_acc = ann_accuracy(sj_bridge.relu_copy(model), x, y, args.batch)
    target = ann_acc - args.margin / 100
    print(f"{meta['dataset']} {meta['model']} {kind} L={levels}: ANN {100 * ann_acc:.2f}% on {n} images, target {100 * target:.2f}%", flush=True)

    rows = our_rows(model, kind, levels, x, y, target, args)
    theirs, sj_desc = spikingjelly_rows(model, meta, x, y, target, args)
    rows += theirs
    time_rows(rows, x, args)
    results = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
               "checkpoint": args.checkpoint, "dataset": meta["dataset"], "model": meta["model"], "activation": meta["activation"],
               "images": n, "ann_accuracy": ann_acc, "relu_ann_accuracy": relu_acc, "target": target, "batch": args.batch, "threads": args.threads,
               "reps": args.reps, "spikingjelly": sj_desc, "load_before": load_before, "load_after": os.getloadavg(),
               "wall_seconds_total": round(time.perf_counter() - started, 1), "rows": rows, "summary": summarize(rows, args.max_steps)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


SHOW_T = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def markdown(res: dict) -> str:
    lines = [f"{res['dataset']} / {res['model']} / {res['activation']['kind']} L={res['activation']['levels']}: "
             f"ANN {100 * res['ann_accuracy']:.2f}% on the first {res['images']} test images, target {100 * res['target']:.2f}%; "
             f"batch {res['batch']}, {res['threads']} threads, median of {res['reps']} interleaved runs; "
             f"load {res['load_before'][0]:.1f} -> {res['load_after'][0]:.1f}", ""]
    shown = [t for t in SHOW_T if any(t in r["T"] for r in res["rows"])]
    lines.append("| method | " + " | ".join(f"T={t}" for t in shown) + " | T needed | wall s (loop) | wall s (multi-step) |")
    lines.append("|---" * (len(shown) + 4) + "|")
    for r in res["rows"]:
        acc = dict(zip(r["T"], r["accuracy"]))
        cells = [f"{100 * acc[t]:.2f}" if acc.get(t) is not None else "" for t in shown]
        need = str(r["needed"]) if r["needed"] else f"> {max(r['T'])}"
        if r["needed"] is None and r["seconds"] is not None:
            need += f" (timed at {r['timed_steps']})"
        sec = f"{r['seconds']:.2f}" if r["seconds"] is not None else "-"
        multi = f"{r['seconds_multistep']:.2f}" if r.get("seconds_multistep") is not None else "-"
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {need} | {sec} | {multi} |")
    s = res["summary"]
    lines.append("")
    lines.append(f"The same weights with ReLU in place of {res['activation']['kind']} (what SpikingJelly converts) score "
                 f"{100 * res['relu_ann_accuracy']:.2f}% as an ANN. Wall time: all {res['images']} images at the T needed "
                 "(for a SpikingJelly row that never gets there: at its longest T, a lower bound).")
    if s["speedup"]:
        bound = "at least " if s["speedup_is_lower_bound"] else ""
        lines.append(f"Best ours: {s['ours_best']}; best SpikingJelly: {s['sj_best']}; SpikingJelly / ours wall time: "
                     f"**{bound}{s['speedup']:.1f}x**." + (f" ({s['note']}.)" if s.get("note") else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Per-step cost of a converted SNN: the ANN, our SNN per neuron, and SpikingJelly.

What is timed, per network and T (batch and threads fixed for every contender):

* ``ann``: T forward passes of the source ANN as trained (BN + QCFS activations);
  ``ann_folded``: the same ANN with BN folded into the convolutions (what our SNN runs).
* ``if``, ``gn`` (tau = 4), ``tpp``, ``cif`` (T wake steps): ``snnconv.simulate`` of
  the network converted with that neuron, end to end (input checks, chunk planning and
  all). ``if`` starts at v(0) = 0 so it computes exactly what SpikingJelly computes.
* ``sj``: SpikingJelly 2.0.0's ``FXConverter(RateCodingRecipe)`` network, its layer
  scales set to our thetas, run as its examples run it (single-step module called T
  times); ``sj_multistep``: the same network in its multi-step mode (one call on the
  input repeated T times). Both are skipped with a message when spikingjelly is absent.

Before timing, a fairness check asserts that ``if`` and both SpikingJelly runs return
identical outputs on this input (the test ``tests/test_spikingjelly_parity.py`` checks
every layer's spikes on small networks).

Contenders are interleaved: every repetition times each of them once, in an order
rotated from one repetition to the next, so that load from other processes hits all of
them alike. Reported: the median time, the spread (interquartile range), and the ratio
to T x ANN computed within each repetition (paired), median and spread.

    python bench/speed.py --out bench/results/speed                 # the README table
    python bench/speed.py --profile --out bench/results/profile     # torch profiler tables
    python bench/speed.py --memory --out bench/results/memory       # peak memory vs T
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sj_bridge  # noqa: E402

from snnconv import convert, create_model, simulate  # noqa: E402
from snnconv.activations import QuantizedClip  # noqa: E402
from snnconv.convert import prepare  # noqa: E402

NEURON_OPTIONS = {"if": {"initial_potential": 0.0}, "gn": {"group_size": 4}, "tpp": {}, "cif": {}}


def load_input(batch: int, data_dir: str | None, seed: int) -> tuple[torch.Tensor, str]:
    """The first ``batch`` CIFAR-10 (JPEG-q75) test images when ``data_dir`` is given, else N(0, 1)."""
    if data_dir:
        from snnconv.data import load_dataset

        test = load_dataset("cifar10_jpeg", "test", data_dir)
        return test.normalized(slice(0, batch)), f"first {batch} CIFAR-10 (JPEG-q75) test images"
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=g), f"{batch} N(0,1) images 3x32x32"


@torch.no_grad()
def build_source(name: str, checkpoint: str | None, x: torch.Tensor, seed: int) -> tuple[torch.nn.Module, str]:
    """The source ANN: a trained checkpoint, or seeded random weights whose QCFS clip values
    are set to the 99th percentile of each layer's input on ``x`` (so that every layer fires
    at a realistic rate; the dense work does not depend on it)."""
    if checkpoint:
        from snnconv.checkpoint import load_checkpoint

        model, _ = load_checkpoint(checkpoint)
        return model.eval(), f"trained checkpoint {checkpoint}"
    torch.manual_seed(seed)
    model = create_model(name, activation="qcfs", levels=4).eval()

    def set_clip(module, inputs):
        module.threshold.data.fill_(float(inputs[0].flatten()[::7].quantile(0.99)) + 1e-3)

    handles = [m.register_forward_pre_hook(set_clip) for m in model.modules() if isinstance(m, QuantizedClip)]
    model(x)
    for h in handles:
        h.remove()
    return model, f"random weights (seed {seed}), QCFS L=4, lambda = 99th percentile of each layer's input"


def contenders(model: torch.nn.Module, x: torch.Tensor, neurons: list[str], with_sj: bool, check_steps: int = 4) -> dict:
    """name -> callable ``run(T)`` running T steps (or T ANN forwards) on ``x``. Networks are
    built once; with SpikingJelly, the fairness check runs first (``check_steps`` steps)."""
    folded = prepare(model).eval()
    runs = {
        "ann": lambda steps: [model(x) for _ in range(steps)],
        "ann_folded": lambda steps: [folded(x) for _ in range(steps)],
    }
    snns = {n: convert(model, n, **NEURON_OPTIONS[n]) for n in neurons}
    for n, snn in snns.items():
        runs[n] = (lambda steps, s=snn: simulate(s, x, steps))
    if with_sj:
        from spikingjelly.activation_based import functional

        sj_single = sj_bridge.convert(sj_bridge.relu_copy(model), x, "99.9%")
        sj_multi = sj_bridge.convert(sj_bridge.relu_copy(model), x, "99.9%")
        reference = snns.get("if") or convert(model, "if", **NEURON_OPTIONS["if"])
        sj_bridge.match_thresholds(sj_single, reference)
        sj_bridge.match_thresholds(sj_multi, reference)
        functional.set_step_mode(sj_multi, "m")

        def run_multi(steps):
            functional.reset_net(sj_multi)
            return sj_multi(x.unsqueeze(0).expand(steps, *x.shape))

        runs["sj"] = lambda steps: sj_bridge.simulate(sj_single, x, steps)
        runs["sj_multistep"] = run_multi
        with torch.no_grad():  # the fairness check: the same spikes give the same outputs
            ours = simulate(reference, x, check_steps)
            for name in ("sj", "sj_multistep"):
                theirs = runs[name](check_steps)
                if not torch.equal(ours, theirs):
                    raise SystemExit(f"fairness check failed: {name} differs from ours by {(ours - theirs).abs().max():.3g}")
            print(f"fairness check passed: ours IF, sj and sj_multistep give identical outputs over {check_steps} steps", flush=True)
    return runs


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


@torch.no_grad()
def race(runs: dict, steps: int, reps: int, warmup: int) -> dict:
    """Interleaved timing; returns per contender the raw times, median, IQR and paired ratios."""
    names = list(runs)
    for _ in range(warmup):
        for n in names:
            runs[n](steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]  # rotate: no fixed position
        for n in order:
            start = time.perf_counter()
            runs[n](steps)
            times[n].append(time.perf_counter() - start)
    result = {}
    for n in names:
        q1, med, q3 = quartiles(times[n])
        ratios = [t / a for t, a in zip(times[n], times["ann"])]
        r1, rmed, r3 = quartiles(ratios)
        result[n] = {"seconds": times[n], "median_s": med, "iqr_s": [q1, q3], "per_step_ms": 1000 * med / steps,
                     "ratio_to_ann": rmed, "ratio_iqr": [r1, r3]}
    for n in names:
        if "ann_folded" in times:
            result[n]["ratio_to_ann_folded"] = statistics.median(t / f for t, f in zip(times[n], times["ann_folded"]))
        if "if" in times:
            result[n]["ratio_to_if"] = statistics.median([t / i for t, i in zip(times[n], times["if"])])
        if "sj" in times:
            result[n]["ratio_to_sj"] = statistics.median([t / s for t, s in zip(times[n], times["sj"])])
    return result


LABELS = {"ann": "ANN (BN + QCFS)", "ann_folded": "ANN, BN folded", "if": "ours IF", "gn": "ours GN tau=4",
          "tpp": "ours TPP", "cif": "ours CIF", "sj": "SpikingJelly (single-step loop)",
          "sj_multistep": "SpikingJelly (multi-step)"}


def markdown(results: dict) -> str:
    lines = [f"Per-step cost, batch {results['batch']}, {results['threads']} threads, {results['reps']} interleaved repetitions "
             f"(median; ratio = paired median of time / (T x ANN forward), IQR in brackets). "
             f"Load average before/after: {results['load_before'][0]:.1f} / {results['load_after'][0]:.1f}.", ""]
    for model, per_t in results["models"].items():
        lines += [f"**{model}** ({results['sources'][model]})", ""]
        steps = list(per_t)
        lines.append("| contender | " + " | ".join(f"T={t}: ms/step | x T·ANN | vs SJ" for t in steps) + " |")
        lines.append("|---" + "|---|---|---" * len(steps) + "|")
        for name in per_t[steps[0]]:
            cells = []
            for t in steps:
                r = per_t[t][name]
                sj = f"{r['ratio_to_sj']:.2f}" if "ratio_to_sj" in r else "-"
                cells.append(f"{r['per_step_ms']:.1f} | {r['ratio_to_ann']:.3f} [{r['ratio_iqr'][0]:.2f}-{r['ratio_iqr'][1]:.2f}] | {sj}")
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def environment(args) -> dict:
    return {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "threads": args.threads, "batch": args.batch, "reps": args.reps, "warmup": args.warmup,
            "spikingjelly": _sj_version()}


def _sj_version() -> str | None:
    if not sj_bridge.available():
        return None
    from importlib.metadata import version

    return version("spikingjelly")


def write(out: str, data: dict, table: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(data, indent=1))
    path.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"wrote {path.with_suffix('.json')} and {path.with_suffix('.md')}")


def main_speed(args) -> None:
    with_sj = not args.no_spikingjelly and sj_bridge.available()
    if not with_sj:
        print("spikingjelly not installed (optional: pip install spikingjelly==2.0.0 --no-deps loguru): skipping its rows")
    neurons = args.neurons.split(",")
    x, input_desc = load_input(args.batch, args.data_dir, args.seed)
    results = {**environment(args), "input": input_desc, "load_before": os.getloadavg(), "models": {}, "sources": {}}
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    for name in args.models.split(","):
        model, desc = build_source(name, checkpoints.get(name), x, args.seed)
        results["sources"][name] = desc
        results["models"][name] = {}
        runs = contenders(model, x, neurons, with_sj)
        for steps in [int(t) for t in args.steps.split(",")]:
            results["models"][name][steps] = race(runs, steps, args.reps, args.warmup)
            summary = ", ".join(f"{n} {r['ratio_to_ann']:.3f}" for n, r in results["models"][name][steps].items())
            print(f"{name} T={steps}: x T·ANN: {summary}  (load {os.getloadavg()[0]:.1f})", flush=True)
    results["load_after"] = os.getloadavg()
    write(args.out, results, markdown(results))


def main_profile(args) -> None:
    """torch.profiler tables of one simulation per neuron (and SpikingJelly), sorted by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    x, _ = load_input(args.batch, args.data_dir, args.seed)
    steps = int(args.steps.split(",")[0])
    sections = []
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    for name in args.models.split(","):
        model, desc = build_source(name, checkpoints.get(name), x, args.seed)
        runs = contenders(model, x, args.neurons.split(","), not args.no_spikingjelly and sj_bridge.available())
        for contender in runs:
            with torch.no_grad():
                runs[contender](steps)  # warm-up
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    runs[contender](steps)
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
            sections.append(f"## {name} ({desc}), T={steps}, batch {args.batch}, {args.threads} threads: {contender}\n\n```\n{table}\n```\n")
    import snnconv

    header = (f"# torch profiler, snnconv from {Path(snnconv.__file__).parent}, load {os.getloadavg()[0]:.1f}\n\n"
              f"Command: python {' '.join(shlex.quote(a) for a in sys.argv)}\n")
    path = Path(args.out).with_suffix(".md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(sections))
    print(f"wrote {path}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_memory(args) -> None:
    """One measurement in a fresh process: peak RSS growth of one run over the RSS before it."""
    x, _ = load_input(args.batch, args.data_dir, args.seed)
    model, _ = build_source(args.models.split(",")[0], None, x, args.seed)
    steps = int(args.steps)
    if args.child == "ann":
        run = lambda: model(x)  # noqa: E731
    else:
        snn = convert(model, args.child, **NEURON_OPTIONS[args.child])
        options = {"memory_budget": args.budget} if args.budget else {}
        if args.no_window_cap:
            options["window_bytes"] = None
        run = lambda: simulate(snn, x, steps, **options)  # noqa: E731
    with torch.no_grad():
        base = _rss_bytes()
        run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_growth_bytes": max(0, peak - base), "base_rss_bytes": base}))


def main_memory(args) -> None:
    """Peak memory of one simulation vs T, with the default budget and a small one, each in a
    fresh process (ru_maxrss of the process minus its RSS just before the run)."""
    rows = []
    # (memory_budget, cap windows at window_bytes): the defaults (both on); the budget
    # alone at its default and at each --budgets value (window_bytes=None)
    settings = [(0, True), (0, False)] + [(int(b), False) for b in args.budgets.split(",")]
    cases = [("ann", 1, 0, True)] + [(n, t, b, cap) for n in args.neurons.split(",") for b, cap in settings
                                     for t in [int(s) for s in args.steps.split(",")]]
    for neuron, steps, budget, cap in cases:
        cmd = [sys.executable, __file__, "--child", neuron, "--steps", str(steps), "--budget", str(budget), "--models",
               args.models.split(",")[0], "--batch", str(args.batch), "--threads", str(args.threads)]
        if not cap:
            cmd.append("--no-window-cap")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path[1:])})
        value = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"neuron": neuron, "T": steps, "memory_budget": budget or "default (2 GiB)",
                     "window_bytes": "default (8 MiB on CPU)" if cap else None, **value})
        print(rows[-1], flush=True)
    data = {**environment(args), "model": args.models.split(",")[0], "rows": rows}
    lines = [f"Peak memory of one run, {data['model']}, batch {args.batch} (growth of the process's peak RSS over its RSS "
             "before the run; fresh process each)", "", "| run | T | memory_budget | window_bytes | peak MiB |", "|---|---|---|---|---|"]
    for r in rows:
        window = "-" if r["neuron"] == "ann" else (r["window_bytes"] or "None (no cap)")
        lines.append(f"| {r['neuron']} | {r['T']} | {r['memory_budget']} | {window} | {r['peak_growth_bytes'] / 2**20:.0f} |")
    write(args.out, data, "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vgg6,resnet20")
    p.add_argument("--steps", default="4,8,32")
    p.add_argument("--neurons", default="if,gn,tpp,cif")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="torch threads, the same for every contender")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help="CIFAR-10 folder: time on real test images instead of N(0,1) input")
    p.add_argument("--checkpoint", action="append", default=[], help="MODEL=PATH: trained weights for MODEL")
    p.add_argument("--no-spikingjelly", action="store_true")
    p.add_argument("--profile", action="store_true", help="write torch profiler tables instead of timing")
    p.add_argument("--rows", type=int, default=18, help="profiler rows per table")
    p.add_argument("--memory", action="store_true", help="measure peak memory vs T instead of timing")
    p.add_argument("--budgets", default=str(256 << 20), help="--memory: memory_budget values besides the default")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--no-window-cap", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="bench/results/speed", help="output path without extension")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)  # the same for every contender
    if args.child:
        child_memory(args)
    elif args.profile:
        main_profile(args)
    elif args.memory:
        main_memory(args)
    else:
        main_speed(args)


if __name__ == "__main__":
    main()

"""Comparison reports: several conversion methods on one checkpoint, one folder.

``compare()`` evaluates each method (:func:`snnconv.evaluate.evaluate_classification`)
with a cost counter per simulation (:class:`snnconv.insight.CostCounter`), adds the
layer-wise conversion error, and writes, atomically::

    OUT/results.json          the evaluate schema + per-run "cost" and "layer_error"
    OUT/report.md             accuracy, latency, spikes, SOPs and energy per method and T
    OUT/accuracy_latency.png  accuracy against latency steps, ANN as a horizontal line
    OUT/firing_rate.png       firing rate per spiking layer, one line per method
    OUT/layer_error.png       relative MSE per spiking layer, one line per method

Tables and plots are drawn from the JSON only (:func:`render_report`), so
``redraw_report("OUT/results.json")`` rebuilds them without simulating again. Layers
are keyed by their graph name (``site_0``); tables and plots print the user's module
path where the run's ``layer_paths`` records one (:func:`snnconv.evaluate.display_name`).
"""
from __future__ import annotations

import statistics
from pathlib import Path

from .activations import clip_limit
from .errors import SnnconvError, check
from .evaluate import MethodRun, RunSpec, display_name, evaluate_classification
from .experiments import load_evaluation, option_labels, results_record, source_note
from .files import atomic_write, check_output_folder, read_json, write_json, write_text
from .insight import E_AC_PJ, E_MAC_PJ, CostCounter, CostProfile, cost_profile, layerwise_error
from .network import SpikingNetwork

PLOTS = ("accuracy_latency.png", "firing_rate.png", "layer_error.png")


def method_label(run: dict) -> str:
    """'gn (group_size=4)', 'if+per-neuron', 'cif (S=8)': how a run is named in tables and legends."""
    label = run["neuron"] + (f"+{run['permute']}" if run.get("permute") else "")
    options = option_labels(run)
    if run.get("sleep_steps"):
        options.append(f"S={run['sleep_steps']}")
    return label + (f" ({', '.join(options)})" if options else "")


def parse_methods(text: str, steps: list[int], *, seeds: list[int], sleep_steps: int = 0, group_size: str | None = None,
                  target_steps: int | None = None, levels: int | None = None, calibration: str = "99.9") -> list[RunSpec]:
    """'if,gn,tpp,cif,if+per-neuron' -> one :class:`RunSpec` per method.

    Per-method options: ``group_size``/``target_steps`` go to ``gn``; ``sleep_steps`` to
    ``cif``, which then runs T = L wake steps (``levels``, else the largest T) followed by
    S sleep steps; without sleep steps CIF runs every T like the others. ``+per-neuron`` /
    ``+per-layer`` after a name adds temporal permutation.

    Raises:
        SnnconvError: a method other than NEURON or NEURON+per-neuron / +per-layer, or no method.
    """
    specs = []
    for token in [t.strip() for t in text.split(",") if t.strip()]:
        neuron, _, permute = token.partition("+")
        check(permute in ("", "per-neuron", "per-layer"), f"method {token!r}: write NEURON or NEURON+per-neuron / +per-layer")
        options: dict = {}
        if neuron == "gn":
            options["group_size"] = 4 if group_size is None else (group_size if group_size == "auto" else int(group_size))
            if target_steps is not None:
                options["target_steps"] = target_steps
        spec = RunSpec(neuron, list(steps), 0, permute or None, list(seeds), options, calibration)
        if neuron == "cif" and sleep_steps:
            spec.steps, spec.sleep_steps = [levels or max(steps)], sleep_steps
        specs.append(spec)
    check(len(specs) >= 1, f"--neurons needs at least one method, got {text!r}")
    return specs


class CostRecorders:
    """Makes the :class:`CostCounter` of every simulation of a method (``recorder=`` of
    :func:`snnconv.evaluate.evaluate_classification`), with one cost profile, made for the
    first network and shape and reused (the fan-out depends on the structure only).

    Args:
        example: one input ``[1, ...]`` of the simulated shape.
        e_ac, e_mac: picojoules per accumulate / per multiply-accumulate.
    """

    def __init__(self, example, e_ac: float = E_AC_PJ, e_mac: float = E_MAC_PJ) -> None:
        self.example, self.e_ac, self.e_mac = example, e_ac, e_mac
        self.profile: CostProfile | None = None

    def __call__(self, snn: SpikingNetwork) -> CostCounter:
        """A fresh counter for one simulation of ``snn``.

        Raises:
            SnnconvError: negative energies per operation.
        """
        if self.profile is None:
            self.profile = cost_profile(snn, self.example)
        return CostCounter(snn, self.example, self.e_ac, self.e_mac, profile=self.profile)


def cost_per_step(run: MethodRun) -> dict:
    """Per-image cost at every reported step, averaged over seeds (see :mod:`snnconv.insight`).

    Each simulation's counter is read at the steps it reported (a causal run: every T
    as a prefix of its one simulation; a window method: each T's own simulation).
    """
    summaries = [[sim.counter.summary(t) for sim in sims for t in sim.report] for _, sims in run.by_seed()]  # [seed][step]
    shown = min(len(s) for s in summaries)
    summaries = [s[:shown] for s in summaries]
    mean = lambda key: [statistics.fmean(s[j][key] for s in summaries) for j in range(len(summaries[0]))]  # noqa: E731
    last = summaries[0][-1]
    layers = list(last["layers"])
    return {
        "spike_events_per_image": mean("spike_events"),
        "sops_per_image": mean("sops"),
        "energy_pj": mean("energy_pj"),
        "energy_ratio": mean("energy_ratio") if last["energy_ratio"] is not None else None,
        "input_macs": last["input_macs"],
        "ann_macs": last["ann_macs"],
        "ann_energy_pj": last["ann_energy_pj"],
        "e_ac_pj": last["e_ac_pj"],
        "e_mac_pj": last["e_mac_pj"],
        "at_step": last["steps"],
        "layers": {n: {**{k: statistics.fmean(s[-1]["layers"][n][k] for s in summaries)
                           for k in ("neurons", "spike_events", "firing_rate", "sops")},
                       **({"path": last["layers"][n]["path"]} if "path" in last["layers"][n] else {})}  # the module path, if the counter records it
                   for n in layers},
    }


def compare(checkpoint: str | Path, specs: list[RunSpec], out_dir: str | Path, *, data_dir: str | Path | None = None,
            limit: int | None = None, batch_size: int = 256, error_samples: int = 128, calibration_samples: int = 512,
            e_ac: float = E_AC_PJ, e_mac: float = E_MAC_PJ, progress: bool = True, device: str = "cpu") -> dict:
    """Evaluate several methods on one checkpoint and write a report folder (module docstring).

    Args:
        checkpoint: a ``.safetensors`` file from ``snnconv train``.
        specs: the methods (see :func:`parse_methods`).
        out_dir: the report folder (created; files replaced atomically).
        limit: evaluate on the first N test images.
        error_samples: images for the layer-wise error (0 skips it).
        e_ac, e_mac: picojoules per accumulate and per MAC.

    Returns:
        The results dict written to ``out_dir/results.json``.

    Raises:
        SnnconvError: no method, an invalid spec, negative ``error_samples`` or an
            unwritable ``out_dir`` (all before any work), or what loading, conversion,
            simulation and plotting raise.
    """
    from .device import resolve_device
    from .metrics import accuracy

    check(len(specs) >= 1, "give at least one method")
    check(error_samples >= 0, f"error samples must be >= 0, got {error_samples}")
    for spec in specs:
        spec.validate()
    check_output_folder(out_dir)  # before any simulation: a read-only --out fails now
    model, meta, x, y, calibration = load_evaluation(checkpoint, data_dir, limit, resolve_device(device), calibration_samples,
                                                     always_calibrate=any(spec.snn_calibration for spec in specs))
    n = len(y)
    runs = []
    methods = specs
    if progress:
        from tqdm import tqdm

        methods = tqdm(specs, desc="methods", unit="method")
    for spec in methods:
        result = evaluate_classification(model, x, y, spec, calibration, batch_size=batch_size, progress=progress,
                                         recorder=CostRecorders(x[:1], e_ac, e_mac))
        run = result.record
        run["cost"] = cost_per_step(result.run)
        note = source_note(spec.neuron, meta["activation"]["kind"])
        if note:
            run["note"] = note
        if error_samples and not spec.calibrates_per_step:  # one network per T there: no single error curve
            snn = result.run.networks[0]
            steps = spec.steps if not spec.sleep_steps else spec.steps[:1]
            errors = layerwise_error(model, snn, x[:error_samples], steps, sleep_steps=spec.sleep_steps, seed=spec.seeds[0])
            run["layer_error"] = {"steps": run["latency_steps"] if spec.sleep_steps else run["T"], "samples": min(n, error_samples),
                                  "layers": errors}
        runs.append(run)
    limit_model = clip_limit(model)
    results = results_record(meta, checkpoint, runs, n, ann_accuracy=accuracy(model, x, y),
                             clip_limit_accuracy=None if limit_model is None else accuracy(limit_model, x, y))
    out = Path(out_dir)
    write_json(out / "results.json", results)
    render_report(results, out)
    return results


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"


def format_report(results: dict) -> str:
    """The markdown report: one row per method and reported step."""
    first_cost = next((r["cost"] for r in results["runs"] if "cost" in r), None)
    lines = [f"# {results['dataset']} / {results['model']}: ANN accuracy {100 * results['ann_accuracy']:.2f}% "
             f"({results.get('samples', '?')} test images)"
             + ("" if results.get("clip_limit_accuracy") is None
                else f"; clip limit (what IF converges to at large T) {100 * results['clip_limit_accuracy']:.2f}%"), ""]
    if first_cost:
        lines += [f"ANN: {first_cost['ann_macs']:.4g} MACs per image, {first_cost['ann_energy_pj'] / 1e3:.4g} nJ "
                  f"({first_cost['e_mac_pj']} pJ/MAC, {first_cost['e_ac_pj']} pJ/accumulate). SNN energy = "
                  "MACs on the analog input (once per image) + SOPs; counting rules in snnconv/insight.py.", ""]
    lines += ["| method | T | latency steps | accuracy (%) | spikes / image | SOPs / image | energy SNN / ANN |",
              "|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        label = method_label(run)
        steps = run.get("total_steps") or run["T"]
        cost = run.get("cost")
        for j, (t, lat, acc) in enumerate(zip(steps, run["latency_steps"], run["accuracy"])):
            std = run.get("accuracy_std", [0.0] * len(steps))[j]
            t_cell = f"{run['wake_steps']}+{t - run['wake_steps']}" if run.get("sleep_steps") and t > run["wake_steps"] else str(t)
            acc_cell = f"{100 * acc:.2f}" + (f" ± {100 * std:.2f}" if std else "")
            spikes = _fmt(cost["spike_events_per_image"][j], 4) if cost else "n/a"
            sops = _fmt(cost["sops_per_image"][j], 4) if cost else "n/a"
            ratio = f"{cost['energy_ratio'][j]:.3f}" if cost and cost["energy_ratio"] else "n/a"
            lines.append(f"| {label} | {t_cell} | {lat} | {acc_cell} | {spikes} | {sops} | {ratio} |")
    notes = [f"- {method_label(r)}: {r['note']}" for r in results["runs"] if r.get("note")]
    if notes:
        lines += ["", *notes]
    with_error = [r for r in results["runs"] if r.get("layer_error")]
    if with_error:
        layers = list(with_error[0]["layer_error"]["layers"])
        header = [f"{method_label(r)} @ {'step' if r.get('sleep_steps') else 'T'}={r['layer_error']['steps'][-1]}" for r in with_error]
        lines += ["", f"Layer-wise relative MSE Σ(ȳ−a)²/Σa² between the ANN activation and the spiking layer's average "
                  f"output at the largest step ({with_error[0]['layer_error']['samples']} images):", "",
                  "| layer | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        for name in layers:
            cells = [_fmt(r["layer_error"]["layers"].get(name, [None])[-1]) for r in with_error]
            lines.append(f"| {display_name(with_error[0], name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SnnconvError("plots need matplotlib: pip install 'snnconv[plot]' (or pip install matplotlib)") from None
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)  # a private canvas: no pyplot, no global backend change
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))


def plot_accuracy_latency(results: dict, path: str | Path) -> None:
    """Accuracy (%) against latency steps, one line per method, the ANN as a horizontal line.

    Raises:
        SnnconvError: matplotlib is not installed, or ``path`` cannot be written.
    """
    fig, ax = _figure()
    for run in results["runs"]:
        ax.plot(run["latency_steps"], [100 * a for a in run["accuracy"]], marker="o", markersize=3, label=method_label(run))
    ax.axhline(100 * results["ann_accuracy"], color="black", linestyle="--", linewidth=1, label="ANN")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("latency (simulated steps)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{results['dataset']} / {results['model']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, Path(path))


def _per_layer_plot(results: dict, path: Path, value, ylabel: str, title: str, log: bool) -> None:
    fig, ax = _figure()
    names: list[str] = []
    labels: list[str] = []
    for run in results["runs"]:
        data = value(run)
        if not data:
            continue
        if not names:
            names = list(data)
            labels = [display_name(run, n) for n in names]
        ys = [data.get(n) for n in names]
        ax.plot(range(len(names)), [float("nan") if v is None else v for v in ys], marker="o", markersize=3, label=method_label(run))
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("spiking layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if names:
        ax.legend(fontsize=8)
    _save(fig, path)


def render_report(results: dict, out_dir: str | Path) -> list[Path]:
    """Write report.md and the PNG plots for ``results`` into ``out_dir``; returns the paths.

    Raises:
        SnnconvError: ``results`` has no ``runs`` list, matplotlib is missing, or a file
            cannot be written.
    """
    out = Path(out_dir)
    check(isinstance(results, dict) and isinstance(results.get("runs"), list), "not a results JSON: it has no 'runs' list")
    paths = [write_text(out / "report.md", format_report(results))]
    plot_accuracy_latency(results, out / PLOTS[0])
    _per_layer_plot(results, out / PLOTS[1], lambda r: {n: v["firing_rate"] for n, v in r.get("cost", {}).get("layers", {}).items()},
                    "firing rate (events / neuron / step)", "firing rate per layer (largest T)", log=False)
    # Exact zeros (GN at T·τ = L) cannot sit on a log axis: they show as gaps.
    _per_layer_plot(results, out / PLOTS[2],
                    lambda r: {n: (v[-1] if v[-1] else None) for n, v in r.get("layer_error", {}).get("layers", {}).items()},
                    "relative MSE vs ANN activation", "layer-wise conversion error (largest T)", log=True)
    return paths + [out / p for p in PLOTS]


# What render_report reads: top-level keys, and the keys of every run.
_REQUIRED = ("dataset", "model", "ann_accuracy", "runs")
_REQUIRED_RUN = ("neuron", "T", "accuracy", "latency_steps")


def redraw_report(json_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Redraw a report from its ``results.json`` (into its own folder unless ``out_dir`` is given).

    A missing, binary or malformed file, or one lacking a key the report needs, raises
    :class:`SnnconvError` naming the file (and the key).

    Raises:
        SnnconvError: as above, or what :func:`render_report` raises.
    """
    json_path = Path(json_path)
    results = read_json(json_path)
    fix = "pass a results.json written by 'snnconv compare'"
    missing = [k for k in _REQUIRED if k not in results]
    check(not missing, f"results JSON {str(json_path)!r} lacks the key {missing[0]!r}: {fix}" if missing else "")
    check(isinstance(results["runs"], list) and all(isinstance(r, dict) for r in results["runs"]),
          f"results JSON {str(json_path)!r}: 'runs' is not a list of objects: {fix}")
    for i, run in enumerate(results["runs"]):
        missing = [k for k in _REQUIRED_RUN if k not in run]
        check(not missing, f"results JSON {str(json_path)!r}: run {i} lacks the key {missing[0]!r}: {fix}" if missing else "")
    try:
        return render_report(results, out_dir if out_dir is not None else json_path.parent)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as err:
        if isinstance(err, SnnconvError):
            raise
        raise SnnconvError(f"results JSON {str(json_path)!r} has a malformed entry ({type(err).__name__}: {err}): {fix}") from err

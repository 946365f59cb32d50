"""Evaluate conversions: build, convert, simulate, read accuracy per step, write results JSON.

Results schema (plain data; later additions never remove these keys)::

    {"dataset": str, "model": str, "ann_accuracy": float,
     "runs": [{"neuron": str, "options": {...}, "T": [int...], "accuracy": [float...],
               "latency_steps": [int...], ...}]}

A GN run also holds ``group_size``, the tau it used (resolved when given as "auto");
a run on a source its method was not designed for holds a ``note`` (:func:`source_note`).

Under ``torchrun`` every rank simulates the batches ``rank, rank + W, ...`` of the
same batch partition (each batch keeps its global index, hence its seed), and the
correct counts and spike-event totals are summed over ranks, so the numbers equal a
single-process run exactly; rank 0 writes the JSON.
"""
from __future__ import annotations

import copy

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import distributed
from .activations import clip_limit
from .checkpoint import load_checkpoint
from .convert import convert
from .data import load_dataset
from .engine import DEFAULT_MEMORY_BUDGET, simulate
from .errors import SnnconvError, check
from .files import check_output_file, write_json
from .metrics import SpikeCounter, correct_per_step
from .network import SpikingNetwork
from .train import accuracy


@dataclass
class RunSpec:
    """One conversion method to evaluate."""

    neuron: str = "if"
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    sleep_steps: int = 0
    permute: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    options: dict = field(default_factory=dict)
    calibration: str = "99.9"
    stop_when_quiet: bool = False
    per_channel: bool = False
    snn_calibration: str | None = None

    @property
    def calibrates_per_step(self) -> bool:
        """The conversion depends on T (SNN Calibration, MSE thresholds): one per T."""
        return self.snn_calibration is not None or str(self.calibration) == "mse"

    def validate(self) -> None:
        check(len(self.steps) > 0, "give at least one T")
        for t in self.steps:
            check(isinstance(t, int) and t >= 1, f"every T must be an integer >= 1, got {t!r}")
        check(self.sleep_steps >= 0, f"sleep steps must be >= 0, got {self.sleep_steps}")
        check(self.sleep_steps == 0 or len(self.steps) == 1, "with sleep steps give one T (the wake steps, = L)")
        check(len(self.seeds) >= 1, "give at least one seed")


def _batches(n: int, batch_size: int):
    check(isinstance(batch_size, int) and batch_size >= 1, f"batch size must be an integer >= 1, got {batch_size!r}")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def evaluate_snn(snn, x: torch.Tensor, y: torch.Tensor, steps: int, sleep_steps: int, seed: int, batch_size: int,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, progress=None, stop_when_quiet: bool = False,
                 counter: SpikeCounter | None = None) -> tuple[list[float], SpikeCounter, int]:
    """Accuracy after every simulated step (wake + sleep) of one simulation, spike counts
    (into ``counter`` when given, e.g. a :class:`snnconv.insight.CostCounter`), and the
    steps actually used (fewer than wake + sleep with ``stop_when_quiet``)."""
    total = steps + sleep_steps
    correct = torch.zeros(total, dtype=torch.long)
    counter = SpikeCounter() if counter is None else counter
    used = steps
    parts = list(_batches(len(y), batch_size))
    for index in distributed.shard_indices(len(parts)):  # all batches with one process
        part = parts[index]
        out = simulate(snn, x[part], steps, sleep_steps=sleep_steps, seed=seed * 1_000_003 + index,
                       memory_budget=memory_budget, recorder=counter, stop_when_quiet=stop_when_quiet)
        used = max(used, out.shape[0])
        if out.shape[0] < total:  # quiet steps output zero: padding keeps every batch aligned
            out = torch.cat([out, out.new_zeros((total - out.shape[0], *out.shape[1:]))])
        correct += correct_per_step(out, y[part]).cpu()
        if progress is not None:  # rank 0's bar stands for all ranks' (equal) shares
            progress.update((part.stop - part.start) * distributed.world_size())
    if distributed.is_distributed():
        correct = distributed.all_reduce_sum(correct)
        counter = _merge_counters(distributed.gather_objects(counter))
        used = max(distributed.gather_objects(used))
    return (correct.double() / len(y)).tolist(), counter, used


def _merge_counters(counters: list[SpikeCounter]) -> SpikeCounter:
    """One counter holding the sums of the ranks' counters (in rank order).

    Works for any counter type: every dict of per-layer tensors (``events``, and
    ``sops`` for a :class:`snnconv.insight.CostCounter`) is summed. Each batch's counts
    are float32 sums widened to float64; adding such numbers in another order gives the
    same float64 total while it fits float64's 53-bit mantissa (always, for the integer
    counts of IF). A rank with no batch contributes an empty counter.
    """
    merged = copy.deepcopy(counters[0])
    for counter in counters[1:]:
        for attr in ("events", "sops"):
            mine, theirs = getattr(merged, attr, None), getattr(counter, attr, None)
            if mine is None or theirs is None:
                continue
            for name, values in theirs.items():
                mine[name] = mine[name] + values if name in mine else values.clone()
        merged.neurons.update(counter.neurons)
        merged.samples += counter.samples
    return merged


def report_schedule(snn, spec: RunSpec) -> tuple[list[int], list[int]]:
    """The T of every reported accuracy and its latency in steps.

    Wake-sleep runs report every total step (T = the wake steps each time, latency
    1..T+S); others report each requested T once, with the network's latency for it.
    """
    if spec.sleep_steps:
        total = spec.steps[0] + spec.sleep_steps
        return [spec.steps[0]] * total, list(range(1, total + 1))
    report_steps = sorted(set(spec.steps))
    return report_steps, [snn.latency_steps(t) for t in report_steps]


def results_record(meta: dict, checkpoint: str | Path, runs: list[dict], samples: int, **scores) -> dict:
    """The top level of the results JSON: source, test samples, the ANN's scores, runs."""
    return {"dataset": meta["dataset"], "model": meta["model"], **scores, "checkpoint": str(checkpoint),
            "activation": meta["activation"], "samples": samples, "runs": runs}


def _run_record(spec: RunSpec, snn: SpikingNetwork, report_steps: list[int], latency: list[int],
                per_seed: list[list[float]], events_per_image: list[float]) -> dict:
    """A run's results entry: accuracy per reported T (mean and spread over seeds), latency, spikes."""
    columns = list(zip(*per_seed))
    return {
        "neuron": spec.neuron,
        "options": dict(spec.options),
        "T": report_steps,
        "accuracy": [statistics.fmean(c) for c in columns],
        "latency_steps": latency,
        "permute": spec.permute,
        "seeds": spec.seeds[: len(per_seed)],
        "accuracy_std": [statistics.pstdev(c) if len(c) > 1 else 0.0 for c in columns],
        "accuracy_per_seed": per_seed,
        "spike_events_per_image": statistics.fmean(events_per_image),
        "spiking_layers": len(snn.spiking_layers()),
        **_resolved_options(snn),
    }


def run_method(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: RunSpec, calibration_data: torch.Tensor | None = None,
               batch_size: int = 256, memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False,
               counter_factory: Callable[[SpikingNetwork], SpikeCounter] | None = None) -> dict:
    """Convert ``model`` with ``spec`` and measure accuracy at every requested T.

    ``counter_factory(snn)``, when given, makes the recorder of every simulation (one
    per seed for causal methods, one per seed and T for window methods, in that order).

    Causal methods (IF, GN, CIF) read every T off one simulation of the largest T
    (CIF: every total step of the wake + sleep window). Window methods (TPP,
    permutation) depend on T as a whole, so each T is simulated on its own, once per seed.
    """
    spec.validate()
    if spec.calibrates_per_step and (calibration_data is not None or spec.snn_calibration is not None):
        return _run_per_step(model, x, y, spec, calibration_data, batch_size, memory_budget, progress, counter_factory)
    snn = convert(model, spec.neuron, calibration=calibration_data, threshold=spec.calibration,
                  per_channel=spec.per_channel, permute=spec.permute, **spec.options)
    bar = None
    if progress:
        from tqdm import tqdm

        sims = len(spec.seeds) * (1 if snn.causal else len(spec.steps))
        bar = tqdm(total=sims * len(y), desc=f"{spec.neuron}{'+' + spec.permute if spec.permute else ''}", unit="img", leave=False)
    per_seed: list[list[float]] = []
    events_per_image: list[float] = []
    report_steps, latency = report_schedule(snn, spec)
    for seed in spec.seeds:
        if snn.causal or spec.sleep_steps:
            acc, counter, used = evaluate_snn(snn, x, y, max(report_steps), spec.sleep_steps, seed, batch_size, memory_budget, bar,
                                              spec.stop_when_quiet, counter_factory(snn) if counter_factory else None)
            if spec.sleep_steps and spec.stop_when_quiet:
                report_steps, latency, acc = report_steps[:used], latency[:used], acc[:used]
            per_seed.append(acc if spec.sleep_steps else [acc[t - 1] for t in report_steps])
            events_per_image.append(counter.total_events() / len(y))
        else:
            accs = []
            for t in report_steps:
                acc, counter, _ = evaluate_snn(snn, x, y, t, 0, seed, batch_size, memory_budget, bar,
                                               counter=counter_factory(snn) if counter_factory else None)
                accs.append(acc[-1])
            per_seed.append(accs)
            events_per_image.append(counter.total_events() / len(y))  # at the largest T
        if not snn.stochastic:
            break  # deterministic: more seeds would repeat the same numbers
    if bar is not None:
        bar.close()
    run = _run_record(spec, snn, report_steps, latency, per_seed, events_per_image)
    if spec.sleep_steps:
        run.update(wake_steps=spec.steps[0], sleep_steps=spec.sleep_steps, total_steps=latency,
                   steps_used=latency[-1], stopped_when_quiet=spec.stop_when_quiet)
    run["calibration"] = _calibration_record(spec, snn, calibration_data)
    return run


def _resolved_options(snn: SpikingNetwork) -> dict:
    """What a run's options resolved to: GN's tau (``group_size``, also when given as
    ``"auto"`` = ceil(L / target_steps)); empty for other neurons."""
    if snn.neuron != "gn" or not snn.spiking_layers():
        return {}
    return {"group_size": int(snn.spiking_layers()[0][1].params.group_size)}


def source_note(neuron: str, activation_kind: str) -> str | None:
    """The warning for a method run on a source it was not designed for, else None.

    CIF's wake-sleep mapping (CASC) is exact for a clip-floor source (phi = 0); on a QCFS
    (phi = 1/2) or ReLU source it lands far from the ANN.
    """
    if neuron == "cif" and activation_kind != "clipfloor":
        return (f"the source uses {activation_kind} (not clip-floor, phi = 0): CIF's exact "
                "wake-sleep mapping assumes a clip-floor source, so expect a gap to the ANN")
    return None


def _calibration_record(spec: RunSpec, snn: SpikingNetwork, calibration_data: torch.Tensor | None) -> dict:
    """Every calibration choice of a run, for the results JSON."""
    return {"threshold": spec.calibration if calibration_data is not None else None, "per_channel": spec.per_channel,
            "snn_calibration": spec.snn_calibration,
            "images": 0 if calibration_data is None else int(calibration_data.shape[0])}


def _run_per_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: RunSpec, calibration_data: torch.Tensor | None,
                  batch_size: int, memory_budget: int, progress: bool,
                  counter_factory: Callable[[SpikingNetwork], SpikeCounter] | None) -> dict:
    """:func:`run_method` for T-dependent conversions: one conversion (and calibration) per T,
    each simulated for its T, once per seed; the record holds each T's calibration report."""
    check(spec.sleep_steps == 0, "SNN Calibration and MSE thresholds do not combine with sleep steps")
    report_steps = sorted(set(spec.steps))
    per_seed: list[list[float]] = [[] for _ in spec.seeds]
    events: list[float] = []
    latency: list[int] = []
    reports: dict[str, dict] = {}
    snn = None
    for t in report_steps:
        snn = convert(model, spec.neuron, calibration=calibration_data, threshold=spec.calibration, per_channel=spec.per_channel,
                      snn_calibration=spec.snn_calibration, calibration_steps=t, permute=spec.permute, progress=progress,
                      **spec.options)
        reports[str(t)] = snn.calibration.get("snnc") or {}
        latency.append(snn.latency_steps(t))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(spec.seeds) * len(y), desc=f"{spec.neuron} T={t}", unit="img", leave=False)
        for i, seed in enumerate(spec.seeds):
            acc, counter, _ = evaluate_snn(snn, x, y, t, 0, seed, batch_size, memory_budget, bar,
                                           counter=counter_factory(snn) if counter_factory else None)
            per_seed[i].append(acc[-1])
            if t == report_steps[-1]:
                events.append(counter.total_events() / len(y))
            if not snn.stochastic:
                break
        if bar is not None:
            bar.close()
    per_seed = [acc for acc in per_seed if len(acc) == len(report_steps)]
    record = _calibration_record(spec, snn, calibration_data)
    record["per_T"] = reports
    return {**_run_record(spec, snn, report_steps, latency, per_seed, events), "calibration": record}


def load_evaluation(checkpoint: str | Path, data_dir: str | Path | None, limit: int | None, device: torch.device,
                    calibration_samples: int = 512, always_calibrate: bool = False,
                    ) -> tuple[nn.Module, dict, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A checkpoint's model (on ``device``), its metadata, the first ``limit`` test images
    and labels, and for ReLU sources (any source with ``always_calibrate``, e.g. for SNN
    Calibration) the first ``calibration_samples`` training images (else None)."""
    check(isinstance(calibration_samples, int) and calibration_samples >= 1,
          f"--calibration-images must be an integer >= 1, got {calibration_samples!r}")
    model, meta = load_checkpoint(checkpoint)
    model.to(device)
    test = load_dataset(meta["dataset"], "test", data_dir)
    n = len(test) if limit is None else min(limit, len(test))
    check(n >= 1, "the evaluation set is empty: raise --limit")
    x, y = test.normalized(slice(0, n), device=device), test.labels[:n].to(device)
    calibration = None
    if meta["activation"]["kind"] == "relu" or always_calibrate:
        train = load_dataset(meta["dataset"], "train", data_dir)
        calibration = train.normalized(slice(0, calibration_samples), device=device)
    return model, meta, x, y, calibration


def evaluate_checkpoint(checkpoint: str | Path, specs: list[RunSpec], data_dir: str | Path | None = None, limit: int | None = None,
                        batch_size: int = 256, calibration_samples: int | None = None, progress: bool = True,
                        json_path: str | Path | None = None, device: str = "cpu") -> dict:
    """Load a checkpoint, evaluate the ANN and every run spec on the test split, optionally write JSON.

    ``calibration_samples``: training images for ReLU thresholds and SNN Calibration
    (default 512, or 1024 with SNN Calibration, the authors' amount).
    """
    from .train import resolve_device

    dev = distributed.setup(resolve_device(device))
    distributed.run_on_main(lambda: check_output_file(json_path))  # before any work: an unwritable --json fails now
    progress = progress and distributed.is_main()
    snnc = any(spec.snn_calibration for spec in specs)
    if calibration_samples is None:
        calibration_samples = 1024 if snnc else 512
    model, meta, x, y, calibration = load_evaluation(checkpoint, data_dir, limit, dev, calibration_samples, always_calibrate=snnc)
    n = len(y)
    runs = [run_method(model, x, y, spec, calibration, batch_size, progress=progress) for spec in specs]
    for spec, run in zip(specs, runs):
        note = source_note(spec.neuron, meta["activation"]["kind"])
        if note:
            run["note"] = note
    limit_model = clip_limit(model)
    results = results_record(meta, checkpoint, runs, n, ann_accuracy=accuracy(model, x, y),
                             clip_limit_accuracy=None if limit_model is None else accuracy(limit_model, x, y))
    if json_path is not None and distributed.is_main():
        write_json(json_path, results)
    return results


def run_label(run: dict) -> str:
    """A run's name in tables: neuron, permutation and options."""
    label = run["neuron"] + (f"+{run['permute']}" if run.get("permute") else "")
    if run["options"]:
        label += " (" + ", ".join(option_labels(run)) + ")"
    cal = run.get("calibration") or {}
    if cal.get("snn_calibration") or cal.get("per_channel") or cal.get("threshold") == "mse":
        label += f" [theta {cal['threshold']}{' per channel' if cal.get('per_channel') else ''}" + (
            f", SNNC {cal['snn_calibration']}" if cal.get("snn_calibration") else "") + "]"
    return label


def option_labels(run: dict) -> list[str]:
    """A run's options as 'key=value' texts; an 'auto' group size shows the tau it resolved
    to, e.g. 'group_size=2 (auto)'."""
    labels = []
    for key, value in run.get("options", {}).items():
        if key == "group_size" and value == "auto" and run.get("group_size") is not None:
            value = f"{run['group_size']} (auto)"
        labels.append(f"{key}={value}")
    return labels


LATENCY_HEADER = "method ([n]: latency in simulated steps, where it differs from T)"


def run_table(run: dict, cells: list[str]) -> list[str]:
    """Markdown lines of a one-row table for ``run``: a column per reported T (or total
    step), each cell followed by its latency in brackets when that differs from T."""
    steps = run.get("total_steps") or run["T"]
    bracketed = any(lat != t for t, lat in zip(steps, run["latency_steps"]))
    header = f"| {LATENCY_HEADER if bracketed else 'method'} | " + " | ".join(f"{'step' if run.get('total_steps') else 'T'}={t}" for t in steps) + " |"
    cells = [cell + (f" [{lat}]" if lat != t else "") for cell, t, lat in zip(cells, steps, run["latency_steps"])]
    return [header, "|" + "---|" * (len(steps) + 1), f"| {run_label(run)} | " + " | ".join(cells) + " |", ""]


def format_table(results: dict) -> str:
    """A markdown table: one row per run, one column per reported T (latency in brackets when it differs)."""
    limit = results.get("clip_limit_accuracy")
    limit_text = "" if limit is None else f"; clip limit (what IF converges to at large T) {100 * limit:.2f}%"
    samples = f" ({results['samples']} test images)" if results.get("samples") is not None else ""
    lines = [f"{results['dataset']} / {results['model']}{samples}: ANN accuracy {100 * results['ann_accuracy']:.2f}%{limit_text}", ""]
    for run in results["runs"]:
        cells = [f"{100 * acc:.2f}" + (f" ± {100 * std:.2f}" if std else "") for acc, std in zip(run["accuracy"], run["accuracy_std"])]
        lines += run_table(run, cells)
        if run.get("note"):
            lines += [f"Note ({run_label(run)}): {run['note']}", ""]
    return "\n".join(lines)


def parse_steps(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4] with a clear error."""
    items = [v.strip() for v in str(text).split(",")]
    if "" in items and items != [""]:
        raise SnnconvError(f"-T takes comma-separated integers such as 1,2,4,8 with no empty entries, got {text!r}")
    try:
        values = [int(v) for v in items if v]
    except ValueError:
        raise SnnconvError(f"-T takes comma-separated integers such as 1,2,4,8, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise SnnconvError(f"every T must be >= 1, got {text!r}")
    return values

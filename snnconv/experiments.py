"""Evaluate classifiers from the command line: load a checkpoint, run methods, write and
render the results JSON. The evaluation itself (plan, runner, readouts) lives in
:mod:`snnconv.evaluate`; this module builds the specs and renders the results.

Results schema (plain data; later additions never remove these keys)::

    {"dataset": str, "model": str, "ann_accuracy": float,
     "runs": [{"neuron": str, "options": {...}, "T": [int...], "accuracy": [float...],
               "latency_steps": [int...], ...}]}

A GN run also holds ``group_size``, the tau it used (resolved when given as "auto");
a run on a source its method was not designed for holds a ``note`` (:func:`source_note`);
a run whose spiking layers carry the user's module paths holds ``layer_paths``
(``{site name: module path}``).

Under ``torchrun`` every rank simulates the batches ``rank, rank + W, ...`` of the
same batch partition (each batch keeps its global index, hence its seed), and the
correct counts and spike-event totals are summed over ranks, so the numbers equal a
single-process run exactly; rank 0 writes the JSON (:mod:`snnconv.evaluate.runner`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import distributed
from .activations import clip_limit
from .checkpoint import load_checkpoint
from .data import load_dataset
from .engine import DEFAULT_MEMORY_BUDGET
from .errors import SnnconvError, check
from .evaluate.classification import ClassificationReadout, evaluate_classification
from .evaluate.plan import PlannedSimulation, RunSpec, report_schedule
from .evaluate.runner import merge_counters, run_simulation
from .files import check_output_file, write_json
from .metrics import SpikeCounter
from .network import SpikingNetwork
from .metrics import accuracy

__all__ = ["RunSpec", "evaluate_checkpoint", "evaluate_snn", "format_table", "load_evaluation", "parse_steps",
           "report_schedule", "results_record", "run_label", "run_method", "run_table", "source_note"]

_merge_counters = merge_counters  # the old private name (tests/test_distributed.py)


def evaluate_snn(snn, x: torch.Tensor, y: torch.Tensor, steps: int, sleep_steps: int, seed: int, batch_size: int,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, progress=None, stop_when_quiet: bool = False,
                 counter: SpikeCounter | None = None) -> tuple[list[float], SpikeCounter, int]:
    """Accuracy after every simulated step (wake + sleep) of one simulation, spike counts
    (into ``counter`` when given, e.g. a :class:`snnconv.insight.CostCounter`), and the
    steps actually used (fewer than wake + sleep with ``stop_when_quiet``).

    A thin wrapper of :func:`snnconv.evaluate.run_simulation` with a classification readout.

    Raises:
        SnnconvError: a bad batch size, or what :func:`snnconv.simulate` raises.
    """
    planned = PlannedSimulation(seed, steps, sleep_steps, tuple(range(1, steps + sleep_steps + 1)))
    done = run_simulation(snn, x, planned, ClassificationReadout(y), batch_size=batch_size, memory_budget=memory_budget,
                          recorder=counter, progress=progress, stop_when_quiet=stop_when_quiet)
    # Steps a quiet run did not simulate output zero: their accuracy is the last step's.
    padded = done.values + [done.values[-1]] * (len(planned.report) - len(done.values))
    return padded, done.counter, done.steps_used


def results_record(meta: dict, checkpoint: str | Path, runs: list[dict], samples: int, **scores) -> dict:
    """The top level of the results JSON: source, test samples, the ANN's scores, runs."""
    return {"dataset": meta["dataset"], "model": meta["model"], **scores, "checkpoint": str(checkpoint),
            "activation": meta["activation"], "samples": samples, "runs": runs}


def run_method(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: RunSpec, calibration_data: torch.Tensor | None = None,
               batch_size: int = 256, memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False,
               counter_factory: Callable[[SpikingNetwork], SpikeCounter] | None = None) -> dict:
    """Convert ``model`` with ``spec`` and measure accuracy at every requested T: the run's
    results-JSON entry (:func:`snnconv.evaluate.evaluate_classification`'s ``record``).

    ``counter_factory(snn)``, when given, makes the recorder of every simulation; to read
    the counters back, call :func:`snnconv.evaluate.evaluate_classification`, whose
    result names each counter by its simulation.

    Raises:
        SnnconvError: an invalid spec, or what conversion and simulation raise.
    """
    return evaluate_classification(model, x, y, spec, calibration_data, batch_size=batch_size, memory_budget=memory_budget,
                                   progress=progress, recorder=counter_factory).record


def source_note(neuron: str, activation_kind: str) -> str | None:
    """The warning for a method run on a source it was not designed for, else None.

    CIF's wake-sleep mapping (CASC) is exact for a clip-floor source (phi = 0); on a QCFS
    (phi = 1/2) or ReLU source it lands far from the ANN.
    """
    if neuron == "cif" and activation_kind != "clipfloor":
        return (f"the source uses {activation_kind} (not clip-floor, phi = 0): CIF's exact "
                "wake-sleep mapping assumes a clip-floor source, so expect a gap to the ANN")
    return None


def load_evaluation(checkpoint: str | Path, data_dir: str | Path | None, limit: int | None, device: torch.device,
                    calibration_samples: int = 512, always_calibrate: bool = False,
                    ) -> tuple[nn.Module, dict, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A checkpoint's model (on ``device``), its metadata, the first ``limit`` test images
    and labels, and for ReLU sources (any source with ``always_calibrate``, e.g. for SNN
    Calibration) the first ``calibration_samples`` training images (else None).

    Raises:
        SnnconvError: a bad ``calibration_samples``, an unreadable checkpoint, a missing
            dataset, or an empty evaluation set (``limit`` < 1).
    """
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

    Raises:
        SnnconvError: an unwritable ``json_path`` or an invalid spec (both before any
            work), or what loading, conversion and simulation raise.
    """
    from .device import resolve_device

    dev = distributed.setup(resolve_device(device))
    distributed.run_on_main(lambda: check_output_file(json_path))  # before any work: an unwritable --json fails now
    for spec in specs:
        spec.validate()
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
        parts = [] if cal.get("threshold") is None else [  # None: trained thresholds (QCFS, clip-floor)
            f"theta {cal['threshold']}{' per channel' if cal.get('per_channel') else ''}"]
        parts += [f"SNNC {cal['snn_calibration']}"] if cal.get("snn_calibration") else []
        label += f" [{', '.join(parts)}]"
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
    """'1,2,4' -> [1, 2, 4] with a clear error.

    Raises:
        SnnconvError: an empty entry, a non-integer, or a value below 1.
    """
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

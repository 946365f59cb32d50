"""Evaluate converted detectors: simulate, decode the running-average head output at every
step, and measure mAP; results in the classifiers' JSON schema plus detection keys::

    {"dataset", "model", "task": "detection", "ann_accuracy" (= ann_map50), "ann_map50", "ann_map",
     "runs": [{"neuron", "options", "T", "accuracy" (= map50), "map50", "map", "latency_steps", ...}]}

``map50`` and ``map`` are lists aligned with ``T`` (for CIF + wake-sleep: with every total
step, like the classifiers' ``accuracy``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import distributed
from ..checkpoint import load_checkpoint
from ..engine import DEFAULT_MEMORY_BUDGET
from ..errors import SnnconvError, check
from ..evaluate import PlannedSimulation, RunSpec, evaluate_detection, run_simulation
from ..evaluate.detection import DetectionReadout
from ..experiments import run_table
from ..files import check_output_file, write_json
from ..metrics import SpikeCounter
from .dataset import load_detection_dataset
from .train import TASK, ann_map


def simulate_detections(snn, x: torch.Tensor, steps: int, sleep_steps: int, report: list[int], stride: int, seed: int = 0,
                        batch_size: int = 64, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                        progress=None) -> tuple[dict[int, list[dict]], SpikeCounter]:
    """Detections read off one simulation at each step in ``report``.

    Args:
        snn: a converted detector; x: images ``[N, C, H, W]``.
        steps: wake steps T; sleep_steps: S (CIF wake-sleep).
        report: 1-based total steps at which to decode (each <= T + S).
        stride: the head's grid stride in pixels.

    Returns:
        ({step: one prediction dict per image}, spike counter over the whole simulation).
        The head output at step t is the running average of the raw outputs (divided by
        min(t, T) under wake-sleep, CASC's readout), decoded and NMS-ed like the ANN's
        (:class:`snnconv.evaluate.DetectionReadout`; batches sharded under torchrun).

    Raises:
        SnnconvError: a bad batch size, or what :func:`snnconv.simulate` raises.
    """
    planned = PlannedSimulation(seed, steps, sleep_steps, tuple(report))
    done = run_simulation(snn, x, planned, DetectionReadout(stride, steps if sleep_steps else None), batch_size=batch_size,
                          memory_budget=memory_budget, progress=progress)
    return dict(zip(report, done.values)), done.counter


def run_detection_method(model: nn.Module, x: torch.Tensor, targets: list[dict], num_classes: int, spec: RunSpec,
                         calibration_data: torch.Tensor | None = None, batch_size: int = 64,
                         memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False) -> dict:
    """Convert the detector ``model`` with ``spec`` and measure mAP at every requested T:
    the run's results-JSON entry (:func:`snnconv.evaluate.evaluate_detection`'s ``record``).

    Causal neurons (IF, GN, CIF) read every T off one simulation of the largest T (CIF:
    every total step of the wake + sleep window, cut when quiet with
    ``spec.stop_when_quiet``); window methods (TPP, permutation) simulate each T on its
    own, once per seed; batches are sharded over torchrun ranks.

    Raises:
        SnnconvError: ``model`` is not a detector, an invalid spec, or what conversion
            and simulation raise.
    """
    return evaluate_detection(model, x, targets, num_classes, spec, calibration_data, batch_size=batch_size,
                              memory_budget=memory_budget, progress=progress).record


def evaluate_detector(checkpoint: str | Path, specs: list[RunSpec], data_dir: str | Path | None = None, limit: int | None = None,
                      batch_size: int = 64, calibration_samples: int = 256, progress: bool = True,
                      json_path: str | Path | None = None, device: str = "cpu") -> dict:
    """Load a detector checkpoint, measure the ANN's and every run spec's mAP on the test split.

    Under ``torchrun`` every rank simulates its share of the batches (the numbers equal
    one process's); rank 0 writes the JSON.

    Raises:
        SnnconvError: an unwritable ``json_path`` or an invalid spec (before any work),
            a checkpoint that is not a detector's, an empty evaluation set, or what
            loading, conversion and simulation raise.
    """
    from ..device import resolve_device

    dev = distributed.setup(resolve_device(device))
    distributed.run_on_main(lambda: check_output_file(json_path))  # before any work: an unwritable --json fails now
    progress = progress and distributed.is_main()
    for spec in specs:
        spec.validate()
    model, meta = load_checkpoint(checkpoint)
    if meta.get("task") != TASK:
        raise SnnconvError(f"{str(checkpoint)!r} is not a detector checkpoint: use 'snnconv evaluate' for classifiers")
    model.to(dev)
    test = load_detection_dataset(meta["dataset"], "test", data_dir, **meta.get("dataset_args", {}))
    n = len(test) if limit is None else min(limit, len(test))
    check(n >= 1, "the evaluation set is empty: raise --limit")
    x = test.normalized(slice(0, n), device=dev)
    targets = test.targets(slice(0, n))
    calibration = None
    if meta["activation"]["kind"] == "relu":
        train = load_detection_dataset(meta["dataset"], "train", data_dir, **meta.get("dataset_args", {}))
        calibration = train.normalized(slice(0, calibration_samples), device=dev)
    ann = ann_map(model, test, x)
    results = {
        "dataset": meta["dataset"],
        "model": meta["model"],
        "task": TASK,
        "accuracy_metric": "map50",
        "ann_accuracy": ann["map50"],
        "ann_map50": ann["map50"],
        "ann_map": ann["map"],
        "checkpoint": str(checkpoint),
        "activation": meta["activation"],
        "samples": n,
        "runs": [run_detection_method(model, x, targets, test.num_classes, spec, calibration, batch_size, progress=progress)
                 for spec in specs],
    }
    if json_path is not None and distributed.is_main():
        write_json(json_path, results)
    return results


def format_detection_table(results: dict) -> str:
    """A markdown table per run: mAP@0.5 (mAP@[.5:.95] in brackets) at each reported step."""
    lines = [f"{results['dataset']} / {results['model']}: ANN mAP@0.5 {100 * results['ann_map50']:.2f}, "
             f"mAP@[.5:.95] {100 * results['ann_map']:.2f}", ""]
    for run in results["runs"]:
        lines += run_table(run, [f"{100 * m50:.2f} ({100 * m:.2f})" for m50, m in zip(run["map50"], run["map"])])
    return "\n".join(lines)

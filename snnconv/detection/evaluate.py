"""Evaluate converted detectors: simulate, decode the running-average head output at every
step, and measure mAP; results in the classifiers' JSON schema plus detection keys::

    {"dataset", "model", "task": "detection", "ann_accuracy" (= ann_map50), "ann_map50", "ann_map",
     "runs": [{"neuron", "options", "T", "accuracy" (= map50), "map50", "map", "latency_steps", ...}]}

``map50`` and ``map`` are lists aligned with ``T`` (for CIF + wake-sleep: with every total
step, like the classifiers' ``accuracy``).
"""
from __future__ import annotations

import statistics
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..convert import convert
from ..engine import DEFAULT_MEMORY_BUDGET, simulate
from ..errors import SnnconvError, check
from ..experiments import RunSpec, report_schedule, run_table
from ..files import write_json
from ..metrics import SpikeCounter, running_average
from .boxes import postprocess
from .dataset import load_detection_dataset
from .metrics import detection_map
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
        min(t, T) under wake-sleep, CASC's readout), decoded and NMS-ed like the ANN's.
    """
    found: dict[int, list[dict]] = {t: [] for t in report}
    counter = SpikeCounter()
    index = torch.tensor([t - 1 for t in report])
    for chunk, start in enumerate(range(0, x.shape[0], batch_size)):
        part = x[start : start + batch_size]
        out = simulate(snn, part, steps, sleep_steps=sleep_steps, seed=seed * 1_000_003 + chunk, memory_budget=memory_budget,
                       recorder=counter)
        averaged = running_average(out, wake_steps=steps if sleep_steps else None)[index.to(out.device)]
        detections = postprocess(averaged.reshape(-1, *averaged.shape[2:]).float(), stride)  # all steps in one batch
        for k, t in enumerate(report):
            found[t] += detections[k * part.shape[0] : (k + 1) * part.shape[0]]
        if progress is not None:
            progress.update(part.shape[0])
    return found, counter


def run_detection_method(model: nn.Module, x: torch.Tensor, targets: list[dict], num_classes: int, spec: RunSpec,
                         calibration_data: torch.Tensor | None = None, batch_size: int = 64,
                         memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False) -> dict:
    """Convert the detector ``model`` with ``spec`` and measure mAP at every requested T.

    Causal neurons (IF, GN, CIF) read every T off one simulation of the largest T (CIF:
    every total step of the wake + sleep window); window methods (TPP, permutation)
    simulate each T on its own, once per seed.
    """
    spec.validate()
    stride = getattr(model, "stride", None)
    check(isinstance(stride, int), f"{type(model).__name__} is not a detector: it has no integer grid 'stride'")
    snn = convert(model, spec.neuron, calibration=calibration_data, calibration_method=spec.calibration,
                  permute=spec.permute, **spec.options)
    bar = None
    if progress:
        from tqdm import tqdm

        sims = len(spec.seeds) * (1 if snn.causal else len(spec.steps))
        bar = tqdm(total=sims * x.shape[0], desc=f"{spec.neuron}{'+' + spec.permute if spec.permute else ''}", unit="img", leave=False)
    report_steps, latency = report_schedule(snn, spec)
    per_seed: list[list[dict[str, float]]] = []
    events: list[float] = []
    for seed in spec.seeds:
        if snn.causal or spec.sleep_steps:
            report = latency if spec.sleep_steps else report_steps
            found, counter = simulate_detections(snn, x, max(report_steps), spec.sleep_steps, report, stride, seed, batch_size,
                                                 memory_budget, bar)
            per_seed.append([detection_map(found[t], targets, num_classes) for t in report])
        else:
            scores = []
            for t in report_steps:
                found, counter = simulate_detections(snn, x, t, 0, [t], stride, seed, batch_size, memory_budget, bar)
                scores.append(detection_map(found[t], targets, num_classes))
            per_seed.append(scores)
        events.append(counter.total_events() / x.shape[0])  # window methods: at the largest T
        if not snn.stochastic:
            break  # deterministic: more seeds would repeat the same numbers
    if bar is not None:
        bar.close()
    columns = list(zip(*per_seed))
    map50 = [statistics.fmean(s["map50"] for s in c) for c in columns]
    run = {
        "neuron": spec.neuron,
        "options": dict(spec.options),
        "T": report_steps,
        "accuracy": map50,
        "map50": map50,
        "map": [statistics.fmean(s["map"] for s in c) for c in columns],
        "latency_steps": latency,
        "permute": spec.permute,
        "seeds": spec.seeds[: len(per_seed)],
        "accuracy_std": [statistics.pstdev([s["map50"] for s in c]) if len(c) > 1 else 0.0 for c in columns],
        "map50_per_seed": [[s["map50"] for s in row] for row in per_seed],
        "spike_events_per_image": statistics.fmean(events),
        "spiking_layers": len(snn.spiking_layers()),
    }
    if spec.sleep_steps:
        run.update(wake_steps=spec.steps[0], sleep_steps=spec.sleep_steps, total_steps=latency)
    return run


def evaluate_detector(checkpoint: str | Path, specs: list[RunSpec], data_dir: str | Path | None = None, limit: int | None = None,
                      batch_size: int = 64, calibration_samples: int = 256, progress: bool = True,
                      json_path: str | Path | None = None, device: str = "cpu") -> dict:
    """Load a detector checkpoint, measure the ANN's and every run spec's mAP on the test split."""
    from ..train import resolve_device

    model, meta = load_checkpoint(checkpoint)
    if meta.get("task") != TASK:
        raise SnnconvError(f"{str(checkpoint)!r} is not a detector checkpoint: use 'snnconv evaluate' for classifiers")
    dev = resolve_device(device)
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
    if json_path is not None:
        write_json(json_path, results)
    return results


def format_detection_table(results: dict) -> str:
    """A markdown table per run: mAP@0.5 (mAP@[.5:.95] in brackets) at each reported step."""
    lines = [f"{results['dataset']} / {results['model']}: ANN mAP@0.5 {100 * results['ann_map50']:.2f}, "
             f"mAP@[.5:.95] {100 * results['ann_map']:.2f}", ""]
    for run in results["runs"]:
        lines += run_table(run, [f"{100 * m50:.2f} ({100 * m:.2f})" for m50, m in zip(run["map50"], run["map"])])
    return "\n".join(lines)

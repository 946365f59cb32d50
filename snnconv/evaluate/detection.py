"""Detection readout: decode the running-average head output at every reported step.

The head output at step t is the running average of the raw outputs, divided by
min(t, T) under wake-sleep (CASC's readout, :func:`snnconv.metrics.running_average`),
decoded and NMS-ed like the ANN's (:func:`snnconv.detection.boxes.postprocess`); the
detections of every step are scored by COCO mAP@0.5 and mAP@[.5:.95]
(:func:`snnconv.detection.metrics.detection_map`).

The detection task is imported here lazily, inside the functions that need it, so the
core package never loads the detector or its datasets.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..engine import DEFAULT_MEMORY_BUDGET
from ..errors import check
from ..metrics import running_average
from ..network import SpikingNetwork
from .plan import RunSpec
from .runner import MethodRun, RecorderFactory, run_method


class DetectionReadout:
    """Per batch: the detections of every image at each reported step.

    Args:
        stride: the head's grid stride in pixels.
        wake_steps: T of a wake-sleep run (the average at step t divides by min(t, T));
            None otherwise (divides by t).
    """

    def __init__(self, stride: int, wake_steps: int | None = None) -> None:
        self.stride = stride
        self.wake_steps = wake_steps

    def read(self, out: torch.Tensor, part: slice, report: Sequence[int]) -> list[list[dict]]:
        """``[one prediction dict per image of the batch]`` at each step of ``report``."""
        from ..detection.boxes import postprocess

        index = torch.tensor([t - 1 for t in report])
        averaged = running_average(out, wake_steps=self.wake_steps)[index.to(out.device)]
        detections = postprocess(averaged.reshape(-1, *averaged.shape[2:]).float(), self.stride)  # all steps in one batch
        size = out.shape[1]
        return [detections[k * size : (k + 1) * size] for k in range(len(report))]

    def combine(self, partials: list[list[list[dict]]], report: Sequence[int]) -> list[list[dict]]:
        """Every image's predictions (batch order) at each step of ``report``."""
        return [[d for part in partials for d in part[k]] for k in range(len(report))]


@dataclass
class DetectionResult:
    """One method's detection results.

    Attributes:
        record: the results-JSON run entry (mAP@0.5 and mAP@[.5:.95] per reported step, ...).
        run: the converted network and every simulation (detections per step) with its counter.
    """

    record: dict
    run: MethodRun

    @property
    def network(self) -> SpikingNetwork:
        """The converted network."""
        return self.run.network


def detection_record(run: MethodRun, scores: list[list[dict[str, float]]]) -> dict:
    """The results-JSON entry of a detection run from each kept seed's mAP at every
    reported step (``scores[seed][step] = {"map50": .., "map": ..}``)."""
    spec, snn = run.spec, run.network
    report_steps, latency = run.schedule()
    seeds = [seed for seed, _ in run.by_seed()]
    columns = list(zip(*scores))
    map50 = [statistics.fmean(s["map50"] for s in c) for c in columns]
    record = {
        "neuron": spec.neuron,
        "options": dict(spec.options),
        "T": report_steps,
        "accuracy": map50,
        "map50": map50,
        "map": [statistics.fmean(s["map"] for s in c) for c in columns],
        "latency_steps": latency,
        "permute": spec.permute,
        "seeds": spec.seeds[: len(seeds)],
        "accuracy_std": [statistics.pstdev([s["map50"] for s in c]) if len(c) > 1 else 0.0 for c in columns],
        "map50_per_seed": [[s["map50"] for s in row] for row in scores],
        "spike_events_per_image": statistics.fmean(run.events_per_input()),
        "spiking_layers": len(snn.spiking_layers()),
    }
    if spec.sleep_steps:
        record.update(wake_steps=spec.steps[0], sleep_steps=spec.sleep_steps, total_steps=latency)
        if spec.stop_when_quiet:
            record.update(steps_used=latency[-1], stopped_when_quiet=True)
    return record


def evaluate_detection(model: nn.Module, x: torch.Tensor, targets: list[dict], num_classes: int, spec: RunSpec,
                       calibration_data: torch.Tensor | None = None, *, batch_size: int = 64,
                       memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False,
                       recorder: RecorderFactory | None = None) -> DetectionResult:
    """Convert the detector ``model`` with ``spec`` and measure mAP at every requested T.

    Same plan and runner as classification (:func:`snnconv.evaluate.run_method`):
    causal neurons read every T off one simulation of the largest T (CIF: every total
    step of the wake + sleep window, cut when quiet with ``spec.stop_when_quiet``);
    window methods simulate each T on its own, once per seed; batches are sharded over
    ``torchrun`` ranks.

    Args:
        model: a detector with an integer grid ``stride``; x: images ``[N, C, H, W]``.
        targets: per image ``{"boxes": [K, 4], "labels": [K]}``; num_classes: C.

    Returns:
        A :class:`DetectionResult` (JSON record, network, simulations and counters).

    Raises:
        SnnconvError: ``model`` has no integer ``stride``, an invalid spec, or what
            conversion and simulation raise.
    """
    from ..detection.metrics import detection_map

    stride = getattr(model, "stride", None)
    check(isinstance(stride, int), f"{type(model).__name__} is not a detector: it has no integer grid 'stride'")
    readout = DetectionReadout(stride, spec.steps[0] if spec.sleep_steps else None)
    run = run_method(model, x, spec, readout, calibration_data, batch_size=batch_size, memory_budget=memory_budget,
                     progress=progress, recorder=recorder)
    _, per_seed = run.values_per_seed()
    scores = [[detection_map(found, targets, num_classes) for found in row] for row in per_seed]
    return DetectionResult(detection_record(run, scores), run)

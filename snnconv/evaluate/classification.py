"""Classification readout: top-1 accuracy of the accumulated output at every reported step.

The prediction at step t is the arg-max of the running sum of the network's outputs
(:func:`snnconv.metrics.correct_per_step`); accuracy = correct / N over all batches (and
ranks). The run record is the ``runs`` entry of the results JSON
(:mod:`snnconv.experiments` documents the schema).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..engine import DEFAULT_MEMORY_BUDGET
from ..metrics import correct_per_step
from ..network import SpikingNetwork
from .names import layer_paths
from .plan import RunSpec
from .runner import MethodRun, RecorderFactory, run_method, summary_record


class ClassificationReadout:
    """Correct predictions per batch; accuracy per reported step over all batches.

    Args:
        labels: class indices ``[N]`` of the evaluated inputs.
    """

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def read(self, out: torch.Tensor, part: slice, report: Sequence[int]) -> torch.Tensor:
        """Correct predictions of this batch at every total step, int64 ``[T + S]`` on the CPU."""
        return correct_per_step(out, self.labels[part]).cpu()

    def combine(self, partials: list[torch.Tensor], report: Sequence[int]) -> list[float]:
        """Accuracy (correct / N, all batches) at each step of ``report``."""
        correct = torch.zeros_like(partials[0]) if partials else torch.zeros(max(report), dtype=torch.long)
        for part in partials:
            correct += part
        accuracy = (correct.double() / len(self.labels)).tolist()
        return [accuracy[t - 1] for t in report]


@dataclass
class ClassificationResult:
    """One method's classification results.

    Attributes:
        record: the results-JSON run entry (accuracy per reported T, latency, spikes, ...).
        run: the converted network(s) and every simulation with its counter
            (:class:`~snnconv.evaluate.runner.MethodRun`).
    """

    record: dict
    run: MethodRun

    @property
    def network(self) -> SpikingNetwork:
        """The converted network (the last one when converted per T)."""
        return self.run.network


def resolved_options(snn: SpikingNetwork) -> dict:
    """What a run's options resolved to: GN's tau (``group_size``, also when given as
    ``"auto"`` = ceil(L / target_steps)); empty for other neurons."""
    if snn.neuron != "gn" or not snn.spiking_layers():
        return {}
    return {"group_size": int(snn.spiking_layers()[0][1].params.group_size)}


def calibration_record(spec: RunSpec, calibration_data: torch.Tensor | None,
                       networks: Sequence[SpikingNetwork] = ()) -> dict:
    """Every calibration choice of a run, for the results JSON, as the conversion applied it.

    ``threshold``: how plain-ReLU thresholds were set from data (``"max"``, ``"mse"``, a
    percentile), None when no threshold was (a QCFS or clip-floor source keeps its trained
    lambda); ``per_channel``; ``snn_calibration``; ``images``: calibration images used;
    ``calibration_steps``: the T each conversion calibrated for, in ascending T (None: not
    T-dependent); with SNN Calibration its ``target``, and for ``"advanced"`` the
    ``weight_calibration`` settings. Read from ``networks``' :attr:`calibration` records
    (:func:`snnconv.convert`); without them, from ``spec`` and ``calibration_data``.
    """
    applied = [net.calibration for net in networks if isinstance(getattr(net, "calibration", None), dict)]
    if not applied:
        return {"threshold": spec.calibration if calibration_data is not None else None, "per_channel": spec.per_channel,
                "snn_calibration": spec.snn_calibration,
                "images": 0 if calibration_data is None else int(calibration_data.shape[0])}
    last = applied[-1]
    record = {key: last[key] for key in ("threshold", "per_channel", "snn_calibration", "images")}
    steps = [cal.get("calibration_steps") for cal in applied]
    record["calibration_steps"] = steps if any(t is not None for t in steps) else None
    if "snnc" in last:
        record["target"] = last["snnc"]["target"]
    if "weight_calibration_settings" in last:
        record["weight_calibration"] = last["weight_calibration_settings"]
    return record


def classification_record(run: MethodRun, calibration_data: torch.Tensor | None = None) -> dict:
    """The results-JSON entry of a classification run: accuracy per reported T (mean and
    spread over seeds), latency, spike events per image, calibration; wake-sleep runs
    add wake/sleep/total steps, per-T conversions each T's calibration report."""
    spec, snn = run.spec, run.network
    report_steps, latency = run.schedule()
    record = {**summary_record(run, "accuracy", "spike_events_per_image"), **resolved_options(snn)}
    if spec.sleep_steps:
        record.update(wake_steps=spec.steps[0], sleep_steps=spec.sleep_steps, total_steps=latency,
                      steps_used=latency[-1], stopped_when_quiet=spec.stop_when_quiet)
    record["calibration"] = calibration_record(spec, calibration_data, run.networks)
    if run.per_step:
        record["calibration"]["per_T"] = {str(t): net.calibration.get("snnc") or {}
                                          for t, net in zip(report_steps, run.networks)}
    paths = layer_paths(snn)
    if paths:
        record["layer_paths"] = paths
    return record


def evaluate_classification(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: RunSpec,
                            calibration_data: torch.Tensor | None = None, *, batch_size: int = 256,
                            memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False,
                            recorder: RecorderFactory | None = None) -> ClassificationResult:
    """Convert ``model`` with ``spec`` and measure top-1 accuracy at every requested T.

    Simulations as :func:`~snnconv.evaluate.plan.plan_simulations` plans them (causal:
    one of the largest T per seed; window methods: one per T; wake-sleep: every total
    step; deterministic networks: the first seed only), sharded over ``torchrun`` ranks.

    Args:
        model: the source ANN; x: test inputs ``[N, ...]``; y: labels ``[N]``.
        spec: the method; calibration_data: training inputs (ReLU thresholds, SNN Calibration).
        recorder: ``recorder(snn)`` makes each simulation's counter (e.g. a
            :class:`snnconv.insight.CostCounter`); the counters come back in ``result.run``.

    Returns:
        A :class:`ClassificationResult` (JSON record, networks, simulations and counters).

    Raises:
        SnnconvError: an invalid spec or batch size, or what conversion and simulation raise.
    """
    run = run_method(model, x, spec, ClassificationReadout(y), calibration_data, batch_size=batch_size,
                     memory_budget=memory_budget, progress=progress, recorder=recorder)
    return ClassificationResult(classification_record(run, calibration_data), run)

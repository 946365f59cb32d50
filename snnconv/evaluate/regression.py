"""Regression readout: mean squared error of the running-average output at every reported step.

ŷ(t) = Σ_{k<=t} out(k) / min(t, T) (:func:`snnconv.metrics.running_average`; the
divisor stops at the wake steps T under wake-sleep) and
MSE(t) = Σ_{n, i} (ŷ_{n,i}(t) − y_{n,i})² / (N · outputs per input), accumulated in
float64 over all batches (and ranks). A converted network whose average output reaches
the ANN's has the ANN's MSE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..engine import DEFAULT_MEMORY_BUDGET
from ..errors import check
from ..metrics import running_average
from ..network import SpikingNetwork
from .names import layer_paths
from .plan import RunSpec
from .runner import MethodRun, RecorderFactory, run_method, summary_record


class RegressionReadout:
    """Per batch: the summed squared error at each reported step.

    Args:
        targets: the true outputs ``[N, ...]`` (the network's output shape per input).
        wake_steps: T of a wake-sleep run, else None.
    """

    def __init__(self, targets: torch.Tensor, wake_steps: int | None = None) -> None:
        self.targets = targets
        self.wake_steps = wake_steps

    def read(self, out: torch.Tensor, part: slice, report: Sequence[int]) -> torch.Tensor:
        """Σ (ŷ(t) − y)² of this batch at each step of ``report``, float64 ``[len(report)]`` on the CPU.

        Raises:
            SnnconvError: the outputs do not have the targets' shape.
        """
        target = self.targets[part].to(out.device, torch.float64)
        check(tuple(out.shape[1:]) == tuple(target.shape),
              f"the network outputs {tuple(out.shape[2:])} per input but the targets are {tuple(target.shape[1:])}: "
              "give targets of the output's shape")
        index = torch.tensor([t - 1 for t in report], device=out.device)
        averaged = running_average(out.double(), self.wake_steps)[index]
        return (averaged - target).square().flatten(1).sum(1).cpu()

    def combine(self, partials: list[torch.Tensor], report: Sequence[int]) -> list[float]:
        """MSE over all inputs and outputs at each step of ``report``."""
        total = torch.zeros(len(report), dtype=torch.float64)
        for part in partials:
            total += part
        return (total / self.targets.numel()).tolist()


@dataclass
class RegressionResult:
    """One method's regression results.

    Attributes:
        record: the run entry: ``mse`` per reported T (mean and spread over seeds),
            latency, spike events per input.
        run: the converted network(s) and every simulation with its counter.
    """

    record: dict
    run: MethodRun

    @property
    def network(self) -> SpikingNetwork:
        """The converted network (the last one when converted per T)."""
        return self.run.network


def evaluate_regression(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, spec: RunSpec,
                        calibration_data: torch.Tensor | None = None, *, batch_size: int = 256,
                        memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False,
                        recorder: RecorderFactory | None = None) -> RegressionResult:
    """Convert ``model`` with ``spec`` and measure the MSE to ``targets`` at every requested T.

    Same plan and runner as classification (:func:`snnconv.evaluate.run_method`).

    Args:
        model: the source ANN; x: inputs ``[N, ...]``; targets: ``[N, ...]`` of the output's shape.

    Returns:
        A :class:`RegressionResult` whose record holds ``T``, ``mse``, ``mse_std``,
        ``mse_per_seed``, ``latency_steps``, ``seeds``, ``spike_events_per_input``.

    Raises:
        SnnconvError: ``targets`` has not one row per input or not the output's shape,
            an invalid spec, or what conversion and simulation raise.
    """
    check(targets.shape[0] == x.shape[0], f"give one target per input: {x.shape[0]} inputs, {targets.shape[0]} targets")
    with torch.no_grad():
        shape = tuple(model(x[:1]).shape[1:])
    check(tuple(targets.shape[1:]) == shape,
          f"{type(model).__name__} outputs {shape} per input but the targets are {tuple(targets.shape[1:])}: "
          "give targets of the output's shape")
    readout = RegressionReadout(targets, spec.steps[0] if spec.sleep_steps else None)
    run = run_method(model, x, spec, readout, calibration_data, batch_size=batch_size, memory_budget=memory_budget,
                     progress=progress, recorder=recorder)
    latency = run.schedule()[1]
    record = summary_record(run, "mse", "spike_events_per_input")
    if spec.sleep_steps:
        record.update(wake_steps=spec.steps[0], sleep_steps=spec.sleep_steps, total_steps=latency)
    paths = layer_paths(run.network)
    if paths:
        record["layer_paths"] = paths
    return RegressionResult(record, run)

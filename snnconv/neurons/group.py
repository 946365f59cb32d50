"""The group neuron (GN) module and its registration as ``"gn"``.

Lv, Fang, Yuan, Tian, "Optimal ANN-SNN Conversion with Group Neurons", ICASSP 2024.
"""
from __future__ import annotations

import math
import numbers

import torch

from ..errors import SnnconvError
from ..functional import GroupParams, WindowContext, group_window
from .base import SourceInfo, SpikingNeuron, _phi, _v0
from .registry import register_neuron


class GroupNeuron(SpikingNeuron):
    """tau IF members sharing one membrane (see :func:`snnconv.functional.group_window`).

    Args:
        threshold: theta, positive (a scalar, or broadcastable to ``[batch, ...]``).
        group_size: tau >= 1 members with thresholds i * theta / tau.
        initial_potential: phi in [0, 1]: v(0) = phi * theta / tau.

    Raises:
        SnnconvError: theta is not finite and > 0, ``group_size`` is not an integer in
            [1, 2^24], or ``initial_potential`` is not in [0, 1].
    """

    supports_inplace = True
    accepts_offset = True

    def __init__(self, threshold: torch.Tensor | float, group_size: int = 1, initial_potential: float = 0.0) -> None:
        super().__init__(threshold)
        self.params = GroupParams(group_size, initial_potential)

    def dynamics(self, x: torch.Tensor, threshold: torch.Tensor, context: WindowContext) -> torch.Tensor:
        return group_window(x, threshold, self.params, inplace=context.inplace, offset=self.offset)

    @property
    def units(self) -> int:
        # A GN step that outputs n * theta / tau carries n spike events.
        return self.params.group_size

    @property
    def spike_range(self) -> tuple[int, int]:
        return (0, self.params.group_size)

    def extra_repr(self) -> str:
        return f"{self._theta_repr()}, τ={self.params.group_size}, v0={_v0(self.params.initial_potential, self.params.group_size)}{self._offset_repr()}"


@register_neuron("gn")
def _gn(
    threshold,
    *,
    source: SourceInfo,
    group_size: int | str = 4,
    target_steps: int | None = None,
    initial_potential: float | None = None,
) -> SpikingNeuron:
    """Group neuron; v(0) = phi * theta / tau, phi = 1/2 unless ``initial_potential`` is given.

    ``group_size="auto"`` picks tau = ceil(L / target_steps) from the source's L.

    Raises:
        SnnconvError: ``target_steps`` is not an integer >= 1; ``"auto"`` without a
            quantised source or ``target_steps``; ``group_size`` is not an integer >= 1.
    """
    if target_steps is not None and (
        isinstance(target_steps, bool) or not isinstance(target_steps, numbers.Integral) or target_steps < 1
    ):
        raise SnnconvError(f"target_steps must be an integer >= 1, got {target_steps!r}")
    if group_size == "auto":
        if source.levels is None or target_steps is None:
            raise SnnconvError(
                "group_size='auto' sets tau = L / target_steps: it needs a quantised source (QCFS/clip-floor) "
                "and target_steps >= 1"
            )
        group_size = max(1, math.ceil(source.levels / int(target_steps)))
    if isinstance(group_size, str):
        try:
            group_size = int(group_size)
        except ValueError:
            raise SnnconvError(f"group_size must be an integer >= 1 or 'auto', got {group_size!r}") from None
    return GroupNeuron(threshold, group_size, _phi(initial_potential, source))

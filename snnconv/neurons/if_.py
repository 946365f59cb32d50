"""The IF neuron module (reset by subtraction) and its registration as ``"if"``.

The IF neuron is the group neuron of one member (../shared/methods.md, section 2):
:class:`IFNeuron` is a :class:`~snnconv.neurons.group.GroupNeuron` with tau = 1 that
prints under its own name.
"""
from __future__ import annotations

import torch

from .base import SourceInfo, SpikingNeuron, _phi, _v0
from .group import GroupNeuron
from .registry import register_neuron


class IFNeuron(GroupNeuron):
    """IF neuron with reset by subtraction; v(0) = phi * theta::

        v(t) = v(t-1) + x(t);  s(t) = [v(t) >= theta];  v(t) -= theta * s(t);  out(t) = theta * s(t)

    Args:
        threshold: theta, positive (a scalar, or broadcastable to ``[batch, ...]``).
        initial_potential: phi in [0, 1].

    Raises:
        SnnconvError: theta is not finite and > 0, or ``initial_potential`` is not in [0, 1].
    """

    def __init__(self, threshold: torch.Tensor | float, initial_potential: float = 0.0) -> None:
        super().__init__(threshold, 1, initial_potential)

    def extra_repr(self) -> str:
        return f"{self._theta_repr()}, v0={_v0(self.params.initial_potential)}{self._offset_repr()}"


@register_neuron("if")
def _if(threshold, *, source: SourceInfo, initial_potential: float | None = None) -> SpikingNeuron:
    """IF with reset by subtraction; v(0) = phi * theta, phi = 1/2 unless ``initial_potential`` is given.

    Raises:
        SnnconvError: theta is not finite and > 0, or ``initial_potential`` is not in [0, 1].
    """
    return IFNeuron(threshold, _phi(initial_potential, source))

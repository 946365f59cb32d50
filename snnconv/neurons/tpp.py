"""The two-phase probabilistic (TPP) neuron module and its registration as ``"tpp"``.

Bojkovic, Wu, Gu, "Temporal Misalignment in ANN-SNN Conversion and Its Mitigation via
Probabilistic Spiking Neurons", ICML 2025.
"""
from __future__ import annotations

import torch

from ..functional import TPPParams, WindowContext, tpp_window
from .base import SourceInfo, SpikingNeuron, _v0
from .registry import register_neuron


class TPPNeuron(SpikingNeuron):
    """Two-phase probabilistic neuron (see :func:`snnconv.functional.tpp_window`).

    Args:
        threshold: theta, positive (a scalar, or broadcastable to ``[batch, ...]``).
        initial_potential: v(0) / theta in [0, 1].

    Raises:
        SnnconvError: theta is not finite and > 0, or ``initial_potential`` is not in [0, 1].
    """

    causal = False
    stochastic = True
    supports_inplace = True
    accepts_offset = True

    def __init__(self, threshold: torch.Tensor | float, initial_potential: float = 0.0) -> None:
        super().__init__(threshold)
        self.params = TPPParams(initial_potential)

    def dynamics(self, x: torch.Tensor, threshold: torch.Tensor, context: WindowContext) -> torch.Tensor:
        return tpp_window(x, threshold, self.params, context.generator, inplace=context.inplace, offset=self.offset)

    def extra_repr(self) -> str:
        return f"{self._theta_repr()}, v0={_v0(self.params.initial_potential)}{self._offset_repr()}"


@register_neuron("tpp")
def _tpp(threshold, *, source: SourceInfo, initial_potential: float | None = None) -> SpikingNeuron:
    """Two-phase probabilistic neuron; v(0) = 0 unless given (measured default, see README).

    Raises:
        SnnconvError: theta is not finite and > 0, or ``initial_potential`` is not in [0, 1].
    """
    return TPPNeuron(threshold, 0.0 if initial_potential is None else initial_potential)

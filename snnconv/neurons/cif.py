"""The consistent IF (CIF) neuron module and its registration as ``"cif"``.

Li, He, Kong, Zeng, "Spiking Neural Networks with Consistent Mapping Relations Allow
High-Accuracy Inference", Information Sciences 2024.
"""
from __future__ import annotations

import torch

from ..functional import CIFParams, WindowContext, cif_window
from .base import SourceInfo, SpikingNeuron
from .registry import register_neuron


class CIFNeuron(SpikingNeuron):
    """Consistent IF neuron (see :func:`snnconv.functional.cif_window`): ternary spikes,
    a wake window followed by sleep steps (``wake_steps`` of the call).

    Args:
        threshold: theta, positive (a scalar, or broadcastable to ``[batch, ...]``).
        negative_spikes: allow s = -1 (the lower bound); off only for ablations.
        spike_cap: never more spikes than wake steps (the upper bound); off only for ablations.

    Raises:
        SnnconvError: theta is not finite and > 0, or a switch is not True or False.
    """

    sleeps = True
    supports_inplace = True

    def __init__(self, threshold: torch.Tensor | float, negative_spikes: bool = True, spike_cap: bool = True) -> None:
        super().__init__(threshold)
        self.params = CIFParams(negative_spikes, spike_cap)

    @property
    def spike_range(self) -> tuple[int, int]:
        return (-1, 1)

    def dynamics(self, x: torch.Tensor, threshold: torch.Tensor, context: WindowContext) -> torch.Tensor:
        return cif_window(x, threshold, self.params, context.wake_steps, inplace=context.inplace)

    def extra_repr(self) -> str:
        # The two switches are ablations: shown only when off.
        off = [name for name in ("negative_spikes", "spike_cap") if not getattr(self.params, name)]
        return ", ".join([self._theta_repr()] + [f"{name}=False" for name in off])


@register_neuron("cif")
def _cif(threshold, *, source: SourceInfo, negative_spikes: bool = True, spike_cap: bool = True) -> SpikingNeuron:
    """Consistent IF neuron for wake-sleep conversion (use a clip-floor source, T = L).

    Raises:
        SnnconvError: theta is not finite and > 0, or a switch is not True or False.
    """
    return CIFNeuron(threshold, negative_spikes, spike_cap)

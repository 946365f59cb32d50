"""Consistent IF (CIF) neuron, run under wake-sleep conversion (WSC).

Li, He, Kong, Zeng, "Spiking Neural Networks with Consistent Mapping Relations Allow
High-Accuracy Inference", Information Sciences 2024.
"""
from __future__ import annotations

import torch

from .params import CIFParams


def cif_window(
    x: torch.Tensor,
    threshold: torch.Tensor,
    params: CIFParams = CIFParams(),
    wake_steps: int | None = None,
) -> torch.Tensor:
    """Run CIF neurons over ``wake_steps`` wake steps followed by the remaining sleep steps.

    State v (starts at 0), signed spike count N, wake-step counter c (frozen in sleep)::

        v = v + x(t);  c = min(t, wake_steps)
        s = +1 if v >= theta and N < c      (never more spikes than wake steps)
        s = -1 if v < 0 and N > 0           (take back an earlier spike)
        s =  0 otherwise
        N = N + s;  v = v - theta * s;  out(t) = theta * s

    Zero input and biases off during sleep are the engine's job; this function only
    freezes c after ``wake_steps``.

    Args:
        x: input window ``[T + S, batch, ...]``.
        threshold: theta, positive.
        params: rule switches (for ablations).
        wake_steps: T; ``None`` means every step is a wake step.

    Returns:
        ``[T + S, batch, ...]`` ternary spikes times theta.
    """
    total = x.shape[0]
    wake = total if wake_steps is None else wake_steps
    drive = x / threshold  # potential in units of theta
    potential = torch.zeros_like(x[0])
    count = torch.zeros_like(x[0])
    spikes = torch.empty_like(x)
    for t in range(total):
        awake_steps = min(t + 1, wake)
        potential.add_(drive[t])
        fire = potential >= 1.0
        if params.spike_cap:
            fire &= count < awake_steps
        s = spikes[t]
        s.copy_(fire)
        if params.negative_spikes:
            s.sub_(((potential < 0) & (count > 0)).to(s.dtype))
        count.add_(s)
        potential.sub_(s)
    return spikes.mul_(threshold)

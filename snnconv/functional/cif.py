"""Consistent IF (CIF) neuron, run under wake-sleep conversion (WSC).

Li, He, Kong, Zeng, "Spiking Neural Networks with Consistent Mapping Relations Allow
High-Accuracy Inference", Information Sciences 2024.
"""
from __future__ import annotations

import torch

from .group import is_constant_window
from .params import CIFParams


def cif_window(
    x: torch.Tensor,
    threshold: torch.Tensor,
    params: CIFParams = CIFParams(),
    wake_steps: int | None = None,
    *,
    inplace: bool = False,
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
        inplace: ``x`` may be overwritten: drive and spikes then share its memory.

    Returns:
        ``[T + S, batch, ...]`` ternary spikes times theta.
    """
    total = x.shape[0]
    wake = total if wake_steps is None else wake_steps
    if inplace and x.is_contiguous() and not is_constant_window(x):
        drive = spikes = x.div_(threshold)  # potential in units of theta
    else:
        drive = spikes = x / threshold
    potential = torch.zeros_like(drive[0])
    # -N rather than N: the lower bound below is then one maximum(), no negation.
    neg_count = torch.zeros_like(drive[0])
    room = torch.empty_like(neg_count)
    lowest = -1.0 if params.negative_spikes else 0.0
    # The rule as arithmetic on the potential, exact because every value is a small integer:
    #   clamp(floor(v), -1, 1)  is +1 for v >= 1, -1 for v < 0, 0 otherwise;
    #   max(., -N)              allows -1 only while N > 0 (the lower bound);
    #   min(., c - N)           allows +1 only while N < c (the upper bound).
    # During the wake steps N <= t < c = t + 1 holds by itself (one spike per step at
    # most), so the upper bound is only evaluated in sleep. Six to eight whole-layer ops
    # per step where the boolean form took eleven.
    for t in range(total):
        s = spikes[t]
        potential.add_(drive[t])  # drive[t] is dead from here on: spikes[t] reuses it
        torch.floor(potential, out=s).clamp_(lowest, 1.0)
        if params.negative_spikes:
            torch.maximum(s, neg_count, out=s)
        if params.spike_cap and t + 1 > wake:
            torch.minimum(s, torch.add(neg_count, wake, out=room), out=s)
        neg_count.sub_(s)
        potential.sub_(s)
    return spikes.mul_(threshold)

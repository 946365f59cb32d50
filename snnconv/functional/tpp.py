"""Two-phase probabilistic (TPP) neuron.

Bojkovic, Wu, Gu, "Temporal Misalignment in ANN-SNN Conversion and Its Mitigation via
Probabilistic Spiking Neurons", ICML 2025 (our reading: ../methods, section 4).
"""
from __future__ import annotations

import torch

from .params import TPPParams


def tpp_window(
    x: torch.Tensor,
    threshold: torch.Tensor,
    params: TPPParams = TPPParams(),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integrate the whole window, then fire Bernoulli spikes owed / slots left.

    With theta the threshold and phi = ``params.initial_potential``::

        phase 1:  u = phi * theta + sum_{t=1..T} x(t)
        phase 2:  v = u; for k = 1..T:
                     p = clip(v / ((T - k + 1) * theta), 0, 1)
                     s(k) ~ Bernoulli(p);  v -= theta * s(k);  out(k) = theta * s(k)

    If u = m * theta (integer 0 <= m <= T) exactly m spikes are emitted, in a uniformly
    random set of slots; the output depends only on the sum of the inputs.

    Args:
        x: input window ``[T, batch, ...]``.
        threshold: theta, positive.
        params: initial potential.
        generator: source of the Bernoulli draws (same seed, same spikes on one device).

    Returns:
        ``[T, batch, ...]`` with values in {0, theta}.
    """
    steps = x.shape[0]
    owed = x.sum(0).div_(threshold).add_(params.initial_potential)
    # One draw for the whole window: no per-step RNG call and the same numbers
    # whatever the order the loop below consumes them in.
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    spikes = torch.empty_like(x)
    for k in range(steps):
        slots_left = steps - k
        probability = (owed / slots_left).clamp_(0.0, 1.0)
        s = spikes[k]
        s.copy_(noise[k] < probability)
        owed.sub_(s)
    return spikes.mul_(threshold)

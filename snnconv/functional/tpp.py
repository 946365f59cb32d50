"""Two-phase probabilistic (TPP) neuron.

Bojkovic, Wu, Gu, "Temporal Misalignment in ANN-SNN Conversion and Its Mitigation via
Probabilistic Spiking Neurons", ICML 2025 (our reading: ../methods, section 4).
"""
from __future__ import annotations

import torch

from .group import is_constant_window
from .params import TPPParams


def tpp_window(
    x: torch.Tensor,
    threshold: torch.Tensor,
    params: TPPParams = TPPParams(),
    generator: torch.Generator | None = None,
    *,
    inplace: bool = False,
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
        inplace: ``x`` may be overwritten (it is dead after phase 1): the random numbers
            and then the spikes are written into its memory. Same values either way.

    Returns:
        ``[T, batch, ...]`` with values in {0, theta}.
    """
    steps = x.shape[0]
    owed = x.sum(0).div_(threshold).add_(params.initial_potential)
    # One draw for the whole window: no per-step RNG call and the same numbers
    # whatever the order the loop below consumes them in. rand() is empty().uniform_(),
    # so drawing into x's memory gives the very same numbers.
    if inplace and x.is_contiguous() and not is_constant_window(x):
        noise = x.uniform_(0.0, 1.0, generator=generator)
    else:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    probability = torch.empty_like(owed)
    for k in range(steps):
        slots_left = steps - k
        # p = owed / slots left, unclamped: noise is in [0, 1), so comparing it with p
        # gives the very spikes of clip(p, 0, 1) for one pass less over the layer.
        torch.div(owed, slots_left, out=probability)
        # Step k's noise is read once, then overwritten by its spike (1.0 / 0.0).
        s = torch.lt(noise[k], probability, out=noise[k])
        owed.sub_(s)
    return noise.mul_(threshold)

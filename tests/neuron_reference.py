"""Neuron rules written step by step from ../shared/methods.md (sections 2-5), sharing no
code with :mod:`snnconv.functional`: the independent references the tests compare with.

Each works in float64 on the whole ``[T, ...]`` window with a plain Python loop over the
steps, in the spec's own terms (theta, members i * theta / tau, signed count N, counter c),
not in the library's units of theta / tau. Besides the spikes, the deterministic ones
return each element's *margin*: the closest its potential came to a firing boundary, in
units of theta. Where the margin is below the float error of the library's arithmetic, a
boundary decision may go either way, so comparisons skip those elements.
"""
from __future__ import annotations

import math

import torch


def group_reference(x: torch.Tensor, theta: torch.Tensor | float, tau: int, phi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GN, section 3 (tau = 1 is IF, section 2): member counts ``[T, ...]`` and margins ``[...]``.

    v(0) = phi * theta / tau; p = v + x; n = #{i in 1..tau : p >= i * theta / tau}; v = p - n * theta / tau.
    """
    theta = torch.as_tensor(theta, dtype=torch.float64)
    x = x.double()
    unit = theta / tau
    v = torch.zeros_like(x[0]) + phi * unit
    margin = torch.full_like(x[0], math.inf)
    counts = []
    for t in range(x.shape[0]):
        p = v + x[t]
        n = torch.zeros_like(p)
        for i in range(1, tau + 1):
            n = n + (p >= i * unit).double()
            margin = torch.minimum(margin, ((p - i * unit) / theta).abs())
        v = p - n * unit
        counts.append(n)
    return torch.stack(counts), margin


def cif_reference(
    x: torch.Tensor, theta: torch.Tensor | float, wake_steps: int | None = None, negative_spikes: bool = True,
    spike_cap: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIF, section 5: signed spikes s(t) in {-1, 0, 1} ``[T, ...]`` and margins ``[...]``.

    v = v + x;  if awake: c = c + 1;  s = +1 if v >= theta and N < c;  s = -1 if v < 0 and N > 0;
    N = N + s;  v = v - theta * s.  (The ablations drop the N < c cap or the -1 spikes.)
    """
    theta = torch.as_tensor(theta, dtype=torch.float64)
    x = x.double()
    v = torch.zeros_like(x[0])
    count = torch.zeros_like(x[0])
    margin = torch.full_like(x[0], math.inf)
    c = 0
    spikes = []
    for t in range(x.shape[0]):
        v = v + x[t]
        if wake_steps is None or t < wake_steps:
            c += 1
        up = (v >= theta) & ((count < c) if spike_cap else torch.ones_like(v, dtype=torch.bool))
        down = (v < 0) & (count > 0) if negative_spikes else torch.zeros_like(v, dtype=torch.bool)
        margin = torch.minimum(margin, torch.minimum((v - theta).abs(), v.abs()) / theta)
        s = up.double() - down.double()
        count = count + s
        v = v - theta * s
        spikes.append(s)
    return torch.stack(spikes), margin


def tpp_total_bounds(x: torch.Tensor, theta: torch.Tensor | float, phi: float, slack: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TPP, section 4: the fewest and most spikes each element can emit over the window.

    Phase 2 fires with probability owed / slots left, so the total is floor(u) or ceil(u)
    of u = clip(phi + sum(x) / theta, 0, T) (a whole u: exactly u); ``slack`` widens u by
    the float error of the library's sum.
    """
    theta = torch.as_tensor(theta, dtype=torch.float64)
    steps = x.shape[0]
    u = phi + x.double().sum(0) / theta
    low = torch.floor(u - slack).clamp(0, steps)
    high = torch.ceil(u + slack).clamp(0, steps)
    return low, high

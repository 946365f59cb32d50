"""Group neuron (GN) dynamics; the IF neuron is the group of one.

Lv, Fang, Yuan, Tian, "Optimal ANN-SNN Conversion with Group Neurons", ICASSP 2024.
"""
from __future__ import annotations

import torch

from .params import GroupParams


def group_window(x: torch.Tensor, threshold: torch.Tensor, params: GroupParams = GroupParams()) -> torch.Tensor:
    """Run tau IF members sharing one membrane over a whole window.

    Update, for t = 1..T, with tau = ``params.group_size`` and phi = ``params.initial_potential``::

        v(0)   = phi * theta / tau
        p(t)   = v(t-1) + x(t)
        n(t)   = clip(floor(p(t) * tau / theta), 0, tau)     # members at or above i*theta/tau
        v(t)   = p(t) - (theta / tau) * n(t)
        out(t) = (theta / tau) * n(t)

    tau = 1 is the IF neuron with reset by subtraction (s(t) = [v >= theta]).

    Args:
        x: input window ``[T, batch, ...]``, floating point.
        threshold: theta, a positive scalar tensor (or broadcastable to ``x.shape[1:]``).
        params: group size and initial potential.

    Returns:
        ``[T, batch, ...]``: theta/tau times the member count n(t) in 0..tau.
    """
    tau = params.group_size
    # The potential is kept in units of theta/tau so that at T = 1 the arithmetic is
    # the very same as QCFS's floor(z * (L / lambda) + phi): bit-identical, not just close.
    scale = tau / threshold
    drive = x * scale
    potential = torch.full_like(x[0], params.initial_potential)
    counts = torch.empty_like(x)
    for t in range(x.shape[0]):
        potential.add_(drive[t])
        n = counts[t]
        if tau == 1:
            # Same values as clamp(floor(u), 0, 1), one op cheaper on the hot path.
            n.copy_(potential >= 1.0)
        else:
            torch.floor(potential, out=n)
            n.clamp_(0, tau)
        potential.sub_(n)
    return counts.mul_(threshold / tau)


def if_window(x: torch.Tensor, threshold: torch.Tensor, initial_potential: float = 0.0) -> torch.Tensor:
    """IF neuron with reset by subtraction over a whole window ``[T, batch, ...]``::

        v(0) = phi * theta
        v(t) = v(t-1) + x(t);  s(t) = [v(t) >= theta];  v(t) -= theta * s(t);  out(t) = theta * s(t)

    Exactly :func:`group_window` with one member.
    """
    return group_window(x, threshold, GroupParams(1, initial_potential))

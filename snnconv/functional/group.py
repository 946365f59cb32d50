"""Group neuron (GN) dynamics; the IF neuron is the group of one.

Lv, Fang, Yuan, Tian, "Optimal ANN-SNN Conversion with Group Neurons", ICASSP 2024.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch

from .loop import is_constant_window, run_steps
from .params import GroupParams

__all__ = ["GroupState", "group_step", "group_window", "if_window", "is_constant_window"]


class GroupState(NamedTuple):
    """State of a group neuron between steps.

    ``potential``: v in units of theta / tau, ``[batch, ...]`` (updated in place).
    """

    potential: torch.Tensor


def group_step(drive: torch.Tensor, state: GroupState, out: torch.Tensor, *, group_size: int) -> GroupState:
    """One step of tau = ``group_size`` IF members sharing one membrane, in units of theta / tau::

        p = v + drive;  n = clip(floor(p), 0, tau);  v = p - n;  out = n

    Args:
        drive: x(t) * tau / theta, ``[batch, ...]``.
        state: v(t-1); its tensor is updated in place to v(t).
        out: ``[batch, ...]`` buffer for the member count n(t) in 0..tau; it may be
            ``drive`` itself (drive is read first).
        group_size: tau >= 1 (1 is the IF neuron: n = [p >= 1]).

    Returns:
        ``state``, now holding v(t).

    Raises:
        Nothing of its own (the neuron module checks its input); torch raises
        ``RuntimeError`` if ``drive``, ``out`` and the potential do not broadcast.
    """
    potential = state.potential
    potential.add_(drive)
    if group_size == 1:
        # Writes 1.0 / 0.0 straight into the float buffer: the values of
        # clamp(floor(u), 0, 1) without a floor, a clamp or a bool temporary.
        torch.ge(potential, 1.0, out=out)
    else:
        torch.floor(potential, out=out)
        out.clamp_(0, group_size)
    potential.sub_(out)
    return state


def group_window(
    x: torch.Tensor,
    threshold: torch.Tensor,
    params: GroupParams = GroupParams(),
    *,
    inplace: bool = False,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run tau IF members sharing one membrane over a whole window.

    Update, for t = 1..T, with tau = ``params.group_size`` and phi = ``params.initial_potential``::

        v(0)   = phi * theta / tau (+ offset)
        p(t)   = v(t-1) + x(t)
        n(t)   = clip(floor(p(t) * tau / theta), 0, tau)     # members at or above i*theta/tau
        v(t)   = p(t) - (theta / tau) * n(t)
        out(t) = (theta / tau) * n(t)

    tau = 1 is the IF neuron with reset by subtraction (s(t) = [v >= theta]). The steps
    are :func:`group_step` run by :func:`snnconv.functional.loop.run_steps`.

    Args:
        x: input window ``[T, batch, ...]``, floating point.
        threshold: theta, a positive scalar tensor (or broadcastable to ``x.shape[1:]``).
        params: group size and initial potential.
        inplace: ``x`` may be overwritten (the engine passes windows nobody else reads):
            the drive, the counts and the output then all live in ``x``'s memory, so the
            neuron allocates nothing of window size. The values are the same either way.
        offset: optional extra v(0) in units of the input (broadcastable to
            ``x.shape[1:]``), e.g. set per neuron by SNN Calibration's potential calibration.

    Returns:
        ``[T, batch, ...]``: theta/tau times the member count n(t) in 0..tau
        (``x`` itself when ``inplace`` and ``x`` is writable).

    Raises:
        Nothing of its own: the window and theta are not checked here (the neuron
        module, :class:`snnconv.neurons.GroupNeuron`, checks them and raises
        :class:`snnconv.errors.SnnconvError`); torch raises ``RuntimeError`` for a
        threshold or offset that does not broadcast to ``x.shape[1:]``.
    """
    tau = params.group_size
    # The potential is kept in units of theta/tau so that at T = 1 the arithmetic is
    # the very same as QCFS's floor(z * (L / lambda) + phi): bit-identical, not just close.
    scale = tau / threshold
    if is_constant_window(x):
        # A static input: scale it once, not T times (same product for every step).
        step_drive = x[0] * scale
        drive = step_drive.expand_as(x)
        counts = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif inplace and x.is_contiguous():
        # Step t reads drive[t] before writing n(t) over it: one buffer for all three.
        drive = counts = x.mul_(scale)
    else:
        drive = x * scale
        counts = drive  # drive is our own fresh tensor: same reuse as above
    potential = torch.full_like(drive[0], params.initial_potential)
    if offset is not None:
        potential.add_(offset.to(potential.dtype) * scale)
    run_steps(partial(group_step, group_size=tau), drive, GroupState(potential), counts)
    return counts.mul_(threshold / tau)


def if_window(x: torch.Tensor, threshold: torch.Tensor, initial_potential: float = 0.0, *, inplace: bool = False) -> torch.Tensor:
    """IF neuron with reset by subtraction over a whole window ``[T, batch, ...]``::

        v(0) = phi * theta
        v(t) = v(t-1) + x(t);  s(t) = [v(t) >= theta];  v(t) -= theta * s(t);  out(t) = theta * s(t)

    Exactly :func:`group_window` with one member.

    Raises:
        snnconv.errors.SnnconvError: ``initial_potential`` is not a number in [0, 1].
        Otherwise as :func:`group_window` (the window is not checked here).
    """
    return group_window(x, threshold, GroupParams(1, initial_potential), inplace=inplace)

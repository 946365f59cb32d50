"""Consistent IF (CIF) neuron, run under wake-sleep conversion (WSC).

Li, He, Kong, Zeng, "Spiking Neural Networks with Consistent Mapping Relations Allow
High-Accuracy Inference", Information Sciences 2024.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch

from .loop import is_constant_window, run_steps
from .params import CIFParams


class CIFState(NamedTuple):
    """State of CIF neurons between steps (tensors ``[batch, ...]``, updated in place).

    ``potential``: v / theta.  ``neg_count``: -N, minus the signed spike count (the lower
    bound is then one maximum(), no negation).  ``steps``: steps taken so far; the
    wake-step counter is c = min(steps, wake_steps) (frozen in sleep).
    ``room``: a work buffer for the upper bound, with no meaning between steps.
    """

    potential: torch.Tensor
    neg_count: torch.Tensor
    steps: int
    room: torch.Tensor

    @classmethod
    def zeros_like(cls, step: torch.Tensor) -> "CIFState":
        """v = 0, N = 0, before step 1, for a step shaped like ``step``."""
        return cls(torch.zeros_like(step), torch.zeros_like(step), 0, torch.empty_like(step))


def cif_step(
    drive: torch.Tensor, state: CIFState, out: torch.Tensor, *, params: CIFParams, wake_steps: int | None
) -> CIFState:
    """One CIF step in units of theta: ``out`` gets the ternary spike s in {-1, 0, +1}::

        v = v + drive;  c = min(t, wake_steps)
        s = +1 if v >= 1 and N < c;  s = -1 if v < 0 and N > 0;  s = 0 otherwise
        N = N + s;  v = v - s

    The rule as arithmetic on the potential, exact because every value is a small integer:
    clamp(floor(v), -1, 1) is +1 for v >= 1, -1 for v < 0, 0 otherwise; max(., -N) allows
    -1 only while N > 0 (the lower bound); min(., c - N) allows +1 only while N < c (the
    upper bound). During the wake steps N <= t - 1 < c = t holds by itself (one spike per
    step at most), so the upper bound is only evaluated in sleep. Six to eight whole-layer
    ops per step where the boolean form took eleven.

    Args:
        drive: x(t) / theta, ``[batch, ...]``.
        state: the state after step t - 1 (its tensors are updated in place).
        out: ``[batch, ...]`` buffer for s(t); it may be ``drive`` itself (drive is read first).
        params: rule switches (for ablations).
        wake_steps: T; ``None`` means every step is a wake step.

    Returns:
        The state after step t.

    Raises:
        Nothing of its own (the neuron module checks its input); torch raises
        ``RuntimeError`` if ``drive``, ``out`` and the state do not broadcast.
    """
    potential, neg_count, steps, room = state
    potential.add_(drive)  # drive is dead from here on: out may reuse it
    torch.floor(potential, out=out).clamp_(-1.0 if params.negative_spikes else 0.0, 1.0)
    if params.negative_spikes:
        torch.maximum(out, neg_count, out=out)
    if params.spike_cap and wake_steps is not None and steps >= wake_steps:
        torch.minimum(out, torch.add(neg_count, wake_steps, out=room), out=out)
    neg_count.sub_(out)
    potential.sub_(out)
    return CIFState(potential, neg_count, steps + 1, room)


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
    freezes c after ``wake_steps``. The steps are :func:`cif_step` run by
    :func:`snnconv.functional.loop.run_steps`.

    Args:
        x: input window ``[T + S, batch, ...]``.
        threshold: theta, positive.
        params: rule switches (for ablations).
        wake_steps: T; ``None`` means every step is a wake step.
        inplace: ``x`` may be overwritten: drive and spikes then share its memory.

    Returns:
        ``[T + S, batch, ...]`` ternary spikes times theta.

    Raises:
        Nothing of its own: the window, theta and ``wake_steps`` are not checked here
        (the neuron module, :class:`snnconv.neurons.CIFNeuron`, checks them and raises
        :class:`snnconv.errors.SnnconvError`); torch raises ``RuntimeError`` for a
        threshold that does not broadcast to ``x.shape[1:]``.
    """
    if inplace and x.is_contiguous() and not is_constant_window(x):
        drive = spikes = x.div_(threshold)  # potential in units of theta
    else:
        drive = spikes = x / threshold
    step = partial(cif_step, params=params, wake_steps=wake_steps)
    run_steps(step, drive, CIFState.zeros_like(drive[0]), spikes)
    return spikes.mul_(threshold)

"""The one time loop of the neuron dynamics: a step function folded over a window.

Every sequential neuron rule (IF/GN and CIF over their input, TPP's phase 2 over its
draws) is a *step function* ``step(drive_t, state, out_t) -> state`` over a small typed
state record (a ``NamedTuple`` of tensors); :func:`run_steps` applies it to the T steps
of a window. Step functions update the state's tensors in place and write step t's
output into ``out_t``, so a whole window allocates nothing per step.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch

State = TypeVar("State")
StepFunction = Callable[[torch.Tensor, State, torch.Tensor], State]


def is_constant_window(x: torch.Tensor) -> bool:
    """True for a window that is one ``[batch, ...]`` value repeated T times without copies.

    ``value.expand(T, ...)`` (stride 0 along time) is the engine's view of a static
    input; neurons then scale that one step once instead of T times, and never write
    into it (its T steps share one memory).

    Raises:
        Nothing: any tensor with at least one dimension is accepted.
    """
    return x.shape[0] > 1 and x.stride(0) == 0


def run_steps(step: StepFunction, drive: torch.Tensor, state: State, out: torch.Tensor | None = None) -> State:
    """Fold ``step`` over the T steps of a window: for t = 0..T-1, ``state = step(drive[t], state, out[t])``.

    Args:
        step: the neuron's step function (its parameters bound, e.g. with
            :func:`functools.partial`); it reads ``drive[t]``, updates ``state`` and
            writes the step's output into ``out[t]``.
        drive: ``[T, batch, ...]``, the per-step input in the units the step expects.
        state: the state record before step 1.
        out: ``[T, batch, ...]`` output buffer; ``None`` writes into ``drive`` itself.
            ``out`` may share memory with ``drive`` (in-place window reuse): every step
            function reads ``drive[t]`` before it writes ``out[t]``, and no step reads an
            earlier ``drive`` step.

    Returns:
        The state record after step T (the outputs are in ``out``).

    Raises:
        Nothing of its own; whatever ``step`` raises propagates (torch raises
        ``RuntimeError`` for buffers whose shapes do not broadcast).
    """
    if out is None:
        out = drive
    for t in range(drive.shape[0]):
        state = step(drive[t], state, out[t])
    return state

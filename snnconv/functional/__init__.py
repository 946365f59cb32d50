"""Pure neuron dynamics over whole time windows ``[T, batch, ...]``; torch only.

Causal neurons (IF/GN, CIF) are step functions over small typed state records
(:class:`GroupState`, :class:`CIFState`), run over a window by the one time loop
:func:`run_steps`; the ``*_window`` functions prepare the window (units, in-place reuse)
around it. TPP is a window function: phase 1 sums the window, phase 2 runs
:func:`tpp_fire_step` through the same loop.
"""
from .cif import CIFState, cif_step, cif_window
from .group import GroupState, group_step, group_window, if_window
from .loop import is_constant_window, run_steps
from .params import (
    CIFParams,
    GroupParams,
    TPPParams,
    WindowContext,
    check_scale,
    check_threshold,
    check_window,
    compute_dtype,
)
from .tpp import TPPFireState, tpp_fire_step, tpp_window

__all__ = [
    "CIFParams",
    "CIFState",
    "GroupParams",
    "GroupState",
    "TPPFireState",
    "TPPParams",
    "WindowContext",
    "check_scale",
    "check_threshold",
    "check_window",
    "compute_dtype",
    "cif_step",
    "cif_window",
    "group_step",
    "group_window",
    "if_window",
    "is_constant_window",
    "run_steps",
    "tpp_fire_step",
    "tpp_window",
]

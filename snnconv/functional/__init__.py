"""Pure neuron dynamics over whole time windows ``[T, batch, ...]``; torch only."""
from .cif import cif_window
from .group import group_window, if_window
from .params import CIFParams, GroupParams, TPPParams, check_scale, check_threshold, check_window, compute_dtype
from .tpp import tpp_window

__all__ = [
    "CIFParams",
    "GroupParams",
    "TPPParams",
    "check_scale",
    "check_threshold",
    "check_window",
    "compute_dtype",
    "cif_window",
    "group_window",
    "if_window",
    "tpp_window",
]

"""Small typed parameter records shared by the neuron dynamics."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SnnconvError, check


def check_threshold(threshold: torch.Tensor | float) -> torch.Tensor:
    """Return ``threshold`` as a tensor after checking it is finite and positive.

    A threshold of 0, a negative one or NaN/inf has no meaning for an integrate-and-fire
    neuron (every input would fire, or none could), so it is refused rather than
    silently producing NaN or inf outputs.
    """
    t = torch.as_tensor(threshold)
    check(t.numel() >= 1, "threshold is empty: give one positive number per layer")
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise SnnconvError(
            f"threshold must be finite and > 0, got {t.flatten()[:4].tolist()}: "
            "calibrate the layer on data or pass a positive threshold"
        )
    return t


def check_window(x: torch.Tensor, name: str = "input window") -> None:
    """Check a neuron input window ``[T, batch, ...]``: floating point, finite, T >= 1."""
    if not isinstance(x, torch.Tensor):
        raise SnnconvError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    check(x.dim() >= 2, f"{name} must have shape [T, batch, ...], got {tuple(x.shape)}")
    check(x.shape[0] >= 1, f"{name} has T = {x.shape[0]} steps: T must be >= 1")
    check(x.is_floating_point(), f"{name} must be floating point, got {x.dtype}: cast with .float()")
    if not bool(torch.isfinite(x).all()):
        raise SnnconvError(f"{name} contains NaN or inf: check the model's weights and the input data")


@dataclass(frozen=True)
class GroupParams:
    """Parameters of a group of ``group_size`` IF members sharing one membrane.

    ``initial_potential`` is phi: v(0) = phi * theta / group_size.
    ``group_size = 1`` is the plain IF neuron with reset by subtraction.
    """

    group_size: int = 1
    initial_potential: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 1:
            raise SnnconvError(f"group_size must be an integer >= 1, got {self.group_size!r}")
        if not math.isfinite(self.initial_potential) or not 0.0 <= self.initial_potential <= 1.0:
            raise SnnconvError(
                f"initial_potential must be in [0, 1] (a fraction of the threshold), got {self.initial_potential!r}"
            )


@dataclass(frozen=True)
class TPPParams:
    """Two-phase probabilistic neuron: ``initial_potential`` is v(0) / theta (0 or 0.5)."""

    initial_potential: float = 0.5

    def __post_init__(self) -> None:
        if not math.isfinite(self.initial_potential) or not 0.0 <= self.initial_potential <= 1.0:
            raise SnnconvError(
                f"initial_potential must be in [0, 1] (a fraction of the threshold), got {self.initial_potential!r}"
            )


@dataclass(frozen=True)
class CIFParams:
    """Consistent IF neuron. The two switches exist for ablations only.

    ``negative_spikes``: allow s = -1 when v < 0 and N > 0 (the lower bound).
    ``spike_cap``: forbid s = +1 once N reaches the wake-step count c (the upper bound).
    """

    negative_spikes: bool = True
    spike_cap: bool = True

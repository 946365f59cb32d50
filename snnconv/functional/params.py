"""Small typed parameter records shared by the neuron dynamics."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from ..errors import SnnconvError, check


def check_threshold(threshold: torch.Tensor | float) -> torch.Tensor:
    """Return ``threshold`` as a tensor after checking it is real, finite and positive.

    A threshold of 0, a negative one or NaN/inf has no meaning for an integrate-and-fire
    neuron (every input would fire, or none could), so it is refused rather than
    silently producing NaN or inf outputs. Python numbers become float64 tensors, so
    no precision is lost before the neuron casts to the input's dtype.

    Raises:
        SnnconvError: ``threshold`` is not a real number or tensor of them, is empty,
            or has a value that is not finite and > 0.
    """
    if isinstance(threshold, torch.Tensor):
        t = threshold
    elif isinstance(threshold, numbers.Real) and not isinstance(threshold, bool):
        t = torch.tensor(float(threshold), dtype=torch.float64)
    else:
        try:
            t = torch.as_tensor(threshold, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise SnnconvError(
                f"threshold must be a positive number or a tensor of them, got {threshold!r}"
            ) from None
    if t.dtype == torch.bool or t.is_complex():
        raise SnnconvError(f"threshold must be real positive numbers, got dtype {t.dtype}")
    check(t.numel() >= 1, "threshold is empty: give one positive number per layer")
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise SnnconvError(
            f"threshold must be finite and > 0, got {t.flatten()[:4].tolist()}: "
            "calibrate the layer on data or pass a positive threshold"
        )
    return t


def check_window(x: torch.Tensor, name: str = "input window") -> float:
    """Check a neuron input window ``[T, batch, ...]``: floating point, finite, T >= 1.

    Returns max |x| (one pass over the window, which also catches NaN and inf).

    Raises:
        SnnconvError: ``x`` is not a tensor, has fewer than 2 dimensions or T = 0 steps,
            is not floating point, or contains NaN or inf.
    """
    if not isinstance(x, torch.Tensor):
        raise SnnconvError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    check(x.dim() >= 2, f"{name} must have shape [T, batch, ...], got {tuple(x.shape)}")
    check(x.shape[0] >= 1, f"{name} has T = {x.shape[0]} steps: T must be >= 1")
    check(x.is_floating_point(), f"{name} must be floating point, got {x.dtype}: cast with .float()")
    if x.numel() == 0:
        return 0.0
    low, high = torch.aminmax(x)  # no window-sized temporary; NaN propagates
    largest = max(-float(low), float(high))
    if not math.isfinite(largest):
        raise SnnconvError(f"{name} contains NaN or inf: check the model's weights and the input data")
    return largest


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype neuron dynamics run in: float16/bfloat16 windows are integrated in float32.

    A half-precision membrane silently drops small inputs (in bfloat16, 0.5 + 0.001 is
    0.5), so the potential is kept in float32 and only the outputs are cast back.

    Raises:
        Nothing: any dtype is accepted (non-float dtypes map to float32).
    """
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def check_scale(largest: float, steps: int, threshold: torch.Tensor, units: int, out_dtype: torch.dtype) -> None:
    """Refuse thresholds and inputs whose spikes or potentials do not fit the dtypes.

    The smallest output step theta/units must be a normal number of ``out_dtype`` and
    theta must not overflow it (else outputs would round to 0 or inf), and the
    potential, at most ``steps * max|x| / (theta/units)`` in units, must stay finite in
    the dtype the dynamics run in (else inf - inf would turn into NaN).

    Raises:
        SnnconvError: theta / units underflows or theta overflows ``out_dtype``, or the
            potential bound overflows the dtype the dynamics run in.
    """
    info = torch.finfo(out_dtype)
    low, high = float(threshold.min()), float(threshold.max())
    if low / units < info.tiny or high > info.max:
        shown = f"{low:.3g}" if low == high else f"{low:.3g}..{high:.3g}"
        raise SnnconvError(
            f"threshold {shown} with {units} spike unit(s) per threshold does not fit {out_dtype} "
            f"outputs (they need theta/{units} >= {info.tiny:.3g} and theta <= {info.max:.3g}): "
            "run the network in float32/float64 or rescale the layer"
        )
    bound = steps * (largest / (low / units)) + units + 1.0
    work = torch.finfo(compute_dtype(out_dtype))
    if not bound < work.max:
        raise SnnconvError(
            f"inputs up to {largest:.3g} over {steps} steps overflow the membrane potential of a neuron with "
            f"threshold {low:.3g} in {compute_dtype(out_dtype)}: rescale the input or run in float64"
        )


def _real(value, name: str) -> float:
    """``value`` as a float, or a clear error (strings, None, complex are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SnnconvError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _integer(value, name: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high], or a clear error (floats such as 2.5 are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
        raise SnnconvError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise SnnconvError(f"{name} must be true or false, got {value!r}")
    return value


def _fraction(value, name: str = "initial_potential") -> float:
    value = _real(value, name)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise SnnconvError(f"{name} must be in [0, 1] (a fraction of the threshold), got {value!r}")
    return value


MAX_GROUP_SIZE = 1 << 24  # member counts stay exact integers in float32


@dataclass(frozen=True)
class GroupParams:
    """Parameters of a group of ``group_size`` IF members sharing one membrane.

    ``initial_potential`` is phi: v(0) = phi * theta / group_size.
    ``group_size = 1`` is the plain IF neuron with reset by subtraction.

    Raises:
        SnnconvError: ``group_size`` is not an integer in [1, 2^24], or
            ``initial_potential`` is not a number in [0, 1].
    """

    group_size: int = 1
    initial_potential: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_size", _integer(self.group_size, "group_size", 1, MAX_GROUP_SIZE))
        object.__setattr__(self, "initial_potential", _fraction(self.initial_potential))


@dataclass(frozen=True)
class TPPParams:
    """Two-phase probabilistic neuron: ``initial_potential`` is v(0) / theta (0 or 0.5).

    Default 0: phase 2 emits clip(u / theta, 0, T) spikes in expectation (no floor), so
    v(0) = theta/2 would add half a spike to every neuron; measured in the README
    ("Benchmarks": v(0) = 0 wins at every T on digits, MNIST and CIFAR-10).

    Raises:
        SnnconvError: ``initial_potential`` is not a number in [0, 1].
    """

    initial_potential: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "initial_potential", _fraction(self.initial_potential))


@dataclass(frozen=True)
class CIFParams:
    """Consistent IF neuron. The two switches exist for ablations only.

    ``negative_spikes``: allow s = -1 when v < 0 and N > 0 (the lower bound).
    ``spike_cap``: forbid s = +1 once N reaches the wake-step count c (the upper bound).

    Raises:
        SnnconvError: a switch is not ``True`` or ``False``.
    """

    negative_spikes: bool = True
    spike_cap: bool = True

    def __post_init__(self) -> None:
        _flag(self.negative_spikes, "negative_spikes")
        _flag(self.spike_cap, "spike_cap")


def _wake_steps(value) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SnnconvError(f"wake_steps must be None or an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class WindowContext:
    """What one call of a neuron's dynamics is told besides its window and theta.

    One record instead of loose keyword arguments: each neuron reads the fields it uses.

    ``wake_steps``: wake steps before sleep (neurons that sleep, e.g. CIF); ``None``:
    every step is a wake step.  ``generator``: the random source of stochastic neurons
    (TPP).  ``inplace``: the input window may be overwritten (no other layer reads it).

    Raises:
        SnnconvError: ``wake_steps`` is neither ``None`` nor an integer >= 1.
    """

    wake_steps: int | None = None
    generator: torch.Generator | None = None
    inplace: bool = False

    def __post_init__(self) -> None:
        _wake_steps(self.wake_steps)

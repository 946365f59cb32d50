"""Spiking neurons as ``nn.Module`` wrappers over :mod:`snnconv.functional`, and their registry.

Every neuron takes a whole input window ``[T, batch, ...]`` and returns the window of
its outputs (spike units times theta) of the same shape. State lives inside one call:
there is nothing to reset between calls.

Add a neuron with one decorated factory::

    @register_neuron("my_if", causal=True)
    def my_if(threshold, *, source, initial_potential=None): ...

The registry-wide tests then check it for shapes, dtypes, determinism and bad input.
"""
from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import SnnconvError
from .registry import Registry
from .functional import (
    CIFParams,
    GroupParams,
    TPPParams,
    check_scale,
    check_threshold,
    check_window,
    compute_dtype,
    cif_window,
    group_window,
    tpp_window,
)


@dataclass(frozen=True)
class SourceInfo:
    """What a neuron may want to know about the ANN activation it replaces."""

    levels: int | None = None  # quantisation levels L (None for ReLU / plain clip)
    shift: float = 0.0  # phi of the source activation (1/2 for QCFS, 0 for clip-floor)


class SpikingNeuron(nn.Module):
    """Base class: holds theta as a buffer and validates the window.

    Class attributes:
        causal: the output at step t depends only on inputs up to t, so one run of the
            largest T yields every shorter T as a prefix.
        sleeps: the neuron understands a wake window followed by sleep steps.
        stochastic: the neuron draws random numbers (takes a generator).

    Properties ``units`` (spike units per theta: an output step is theta / units) and
    ``spike_range`` (the fewest and most spike units per element and step) describe the
    output lattice; the registry-wide property tests check every neuron against them.

    Windows may be float16/bfloat16/float32/float64; half-precision windows are integrated
    in float32 and the outputs cast back (see :func:`snnconv.functional.compute_dtype`).
    """

    causal: bool = True
    sleeps: bool = False
    stochastic: bool = False
    # dynamics() accepts inplace=True (may overwrite its input window); subclasses that
    # do not say so always get a window they may not modify.
    supports_inplace: bool = False

    @property
    def units(self) -> int:
        return 1

    @property
    def spike_range(self) -> tuple[int, int]:
        return (0, 1)

    def __init__(self, threshold: torch.Tensor | float) -> None:
        super().__init__()
        # float64 here; convert() casts every buffer to the model's dtype afterwards, so a
        # float64 model keeps lambda to the last bit.
        theta = check_threshold(threshold).detach().clone()
        self.register_buffer("threshold", theta.to(torch.float64) if theta.is_floating_point() else theta.double())

    def forward(
        self,
        x: torch.Tensor,
        *,
        wake_steps: int | None = None,
        generator: torch.Generator | None = None,
        inplace: bool = False,
        validate: bool = True,
    ) -> torch.Tensor:
        """Run the neuron over the window ``x`` ``[T, batch, ...]``.

        Args:
            x: the input window.
            wake_steps: wake steps before sleep (neurons that sleep).
            generator: random source (stochastic neurons).
            inplace: ``x`` may be overwritten (used when the neuron supports it): the
                engine passes this for windows no other layer reads, saving a
                window-sized allocation and a pass over memory. Same values either way.
            validate: scan the window (finite, and fits the dtype with this threshold).
                The engine passes False: it checks its input and the network's
                parameters once per simulation, and scanning every window again cost
                about a fifth of the simulation time.

        float16/bfloat16 windows are integrated in float32 and cast back.
        """
        if wake_steps is not None and (
            isinstance(wake_steps, bool) or not isinstance(wake_steps, int) or wake_steps < 1
        ):
            raise SnnconvError(f"wake_steps must be None or an integer >= 1, got {wake_steps!r}")
        try:
            fits = torch.broadcast_shapes(self.threshold.shape, x.shape[1:]) == x.shape[1:]
        except RuntimeError:
            fits = False
        if not fits:
            raise SnnconvError(
                f"threshold of shape {tuple(self.threshold.shape)} does not broadcast to the window's "
                f"[batch, ...] shape {tuple(x.shape[1:])}: give one threshold per layer or per channel"
            )
        if validate:
            largest = check_window(x)
            check_threshold(self.threshold)
            check_scale(largest, x.shape[0], self.threshold, self.units, x.dtype)
        work = compute_dtype(x.dtype)
        threshold = self.threshold if self.threshold.dtype == work else self.threshold.to(work)
        if x.dtype != work:  # the float32 copy is ours to overwrite
            x, inplace, out_dtype = x.to(work), True, x.dtype
        else:
            out_dtype = work
        with torch.no_grad():
            if inplace and self.supports_inplace:
                out = self.dynamics(x, threshold, wake_steps=wake_steps, generator=generator, inplace=True)
            else:
                out = self.dynamics(x, threshold, wake_steps=wake_steps, generator=generator)
        return out if out.dtype == out_dtype else out.to(out_dtype)

    def dynamics(self, x, threshold, *, wake_steps, generator) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def set_potential_offset(self, offset: torch.Tensor | None) -> None:
        """Add ``offset`` to v(0) (input units, broadcastable to ``[batch, ...]`` without
        the batch dimension), or remove it with None. Only neurons with
        ``accepts_offset`` integrate it (IF, GN, TPP); SNN Calibration's potential
        calibration sets it (``snnconv.convert.potential_calibration``)."""
        if not self.accepts_offset:
            raise SnnconvError(f"neuron {type(self).__name__} has no per-neuron initial potential: use IF, GN or TPP")
        if offset is None:
            self._buffers.pop("potential_offset", None)
            return
        if not isinstance(offset, torch.Tensor) or not offset.is_floating_point() or not bool(torch.isfinite(offset).all()):
            raise SnnconvError("the potential offset must be a finite floating-point tensor")
        self.register_buffer("potential_offset", offset.detach().clone())

    @property
    def offset(self) -> torch.Tensor | None:
        """The extra v(0) set by :meth:`set_potential_offset`, or None."""
        return self._buffers.get("potential_offset")

    accepts_offset: bool = False

    def spike_units(self, out: torch.Tensor) -> torch.Tensor:
        """Spike events per element and step: |out| / (theta / units), rounded to integers.

        Outputs are whole multiples of theta / units; rounding removes the float error of
        that product (a float16 output is the multiple rounded to 11 bits).
        """
        work = compute_dtype(out.dtype)
        return (out.to(work).abs() * (self.units / self.threshold.to(work))).round_()

    def extra_repr(self) -> str:
        theta = self.threshold.flatten()
        shown = f"{theta.item():.4g}" if theta.numel() == 1 else f"[{theta.numel()} values]"
        return f"threshold={shown}"


class GroupNeuron(SpikingNeuron):
    """tau IF members sharing one membrane (see :func:`snnconv.functional.group_window`)."""

    def __init__(self, threshold, group_size: int = 1, initial_potential: float = 0.0) -> None:
        super().__init__(threshold)
        self.params = GroupParams(group_size, initial_potential)

    supports_inplace = True
    accepts_offset = True

    def dynamics(self, x, threshold, *, wake_steps, generator, inplace=False):
        return group_window(x, threshold, self.params, inplace=inplace, offset=self.offset)

    @property
    def units(self) -> int:
        # A GN step that outputs n * theta / tau carries n spike events.
        return self.params.group_size

    @property
    def spike_range(self) -> tuple[int, int]:
        return (0, self.params.group_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.params.group_size}, initial_potential={self.params.initial_potential}"


class TPPNeuron(SpikingNeuron):
    """Two-phase probabilistic neuron (see :func:`snnconv.functional.tpp_window`)."""

    causal = False
    stochastic = True

    def __init__(self, threshold, initial_potential: float = 0.0) -> None:
        super().__init__(threshold)
        self.params = TPPParams(initial_potential)

    supports_inplace = True
    accepts_offset = True

    def dynamics(self, x, threshold, *, wake_steps, generator, inplace=False):
        return tpp_window(x, threshold, self.params, generator, inplace=inplace, offset=self.offset)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, initial_potential={self.params.initial_potential}"


class CIFNeuron(SpikingNeuron):
    """Consistent IF neuron (see :func:`snnconv.functional.cif_window`)."""

    sleeps = True

    def __init__(self, threshold, negative_spikes: bool = True, spike_cap: bool = True) -> None:
        super().__init__(threshold)
        self.params = CIFParams(negative_spikes, spike_cap)

    @property
    def spike_range(self) -> tuple[int, int]:
        return (-1, 1)

    supports_inplace = True

    def dynamics(self, x, threshold, *, wake_steps, generator, inplace=False):
        return cif_window(x, threshold, self.params, wake_steps, inplace=inplace)

    def extra_repr(self) -> str:
        p = self.params
        return f"{super().extra_repr()}, negative_spikes={p.negative_spikes}, spike_cap={p.spike_cap}"


NeuronFactory = Callable[..., SpikingNeuron]
_NEURONS: Registry[NeuronFactory] = Registry("neuron")


def register_neuron(name: str) -> Callable[[NeuronFactory], NeuronFactory]:
    """Decorator: register ``factory(threshold, *, source: SourceInfo, **options)`` as ``name``.

    Raises:
        SnnconvError: a neuron of that name is already registered (the message names where).
    """
    return _NEURONS.register(name)


def list_neurons(pattern: str = "*") -> list[str]:
    """Names of the registered neurons matching the ``fnmatch`` wildcard ``pattern``, sorted."""
    return _NEURONS.names(pattern)


def neuron_options(name: str) -> list[str]:
    """The keyword options a registered neuron accepts (besides threshold and source)."""
    factory = _lookup(name)
    return [p for p in inspect.signature(factory).parameters if p not in ("threshold", "source")]


def _lookup(name: str | NeuronFactory) -> NeuronFactory:
    return _NEURONS.get(name)


def create_neuron(
    name: str, threshold: torch.Tensor | float = 1.0, *, source: SourceInfo | None = None, **options
) -> SpikingNeuron:
    """Build the registered neuron ``name`` with threshold theta and its options.

    Args:
        name: a name from :func:`list_neurons`.
        threshold: theta, positive.
        source: the ANN activation it replaces (levels, shift), for defaults.
        **options: the neuron's own options (see :func:`neuron_options`).

    Returns:
        An ``nn.Module`` mapping a window ``[T, batch, ...]`` to a window of the same shape.
    """
    factory = _lookup(name)
    allowed = neuron_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise SnnconvError(
            f"neuron {name!r} has no option {', '.join(unknown)}: its options are {', '.join(allowed) or 'none'}"
        )
    return factory(threshold, source=source or SourceInfo(), **options)


# v(0) = theta/2 for IF and GN on every source (QCFS, clip, ReLU): the shift that QCFS
# builds in (phi = 1/2) and that Deng & Gu (ICLR 2021) and SNN Calibration prescribe for
# ReLU sources; docs/methods.md, section 2. ``initial_potential`` overrides it.
DEFAULT_INITIAL_POTENTIAL = 0.5


def _phi(initial_potential: float | None, source: SourceInfo) -> float:
    return DEFAULT_INITIAL_POTENTIAL if initial_potential is None else initial_potential


@register_neuron("if")
def _if(threshold, *, source: SourceInfo, initial_potential: float | None = None) -> SpikingNeuron:
    """IF with reset by subtraction; v(0) = phi * theta, phi = 1/2 unless ``initial_potential`` is given."""
    return GroupNeuron(threshold, 1, _phi(initial_potential, source))


@register_neuron("gn")
def _gn(
    threshold,
    *,
    source: SourceInfo,
    group_size: int | str = 4,
    target_steps: int | None = None,
    initial_potential: float | None = None,
) -> SpikingNeuron:
    """Group neuron; v(0) = phi * theta / tau, phi = 1/2 unless ``initial_potential`` is given.

    ``group_size="auto"`` picks tau = ceil(L / target_steps) from the source's L.
    """
    if target_steps is not None and (
        isinstance(target_steps, bool) or not isinstance(target_steps, numbers.Integral) or target_steps < 1
    ):
        raise SnnconvError(f"target_steps must be an integer >= 1, got {target_steps!r}")
    if group_size == "auto":
        if source.levels is None or target_steps is None:
            raise SnnconvError(
                "group_size='auto' sets tau = L / target_steps: it needs a quantised source (QCFS/clip-floor) "
                "and target_steps >= 1"
            )
        group_size = max(1, math.ceil(source.levels / int(target_steps)))
    if isinstance(group_size, str):
        try:
            group_size = int(group_size)
        except ValueError:
            raise SnnconvError(f"group_size must be an integer >= 1 or 'auto', got {group_size!r}") from None
    return GroupNeuron(threshold, group_size, _phi(initial_potential, source))


@register_neuron("tpp")
def _tpp(threshold, *, source: SourceInfo, initial_potential: float | None = None) -> SpikingNeuron:
    """Two-phase probabilistic neuron; v(0) = 0 unless given (measured default, see README)."""
    return TPPNeuron(threshold, 0.0 if initial_potential is None else initial_potential)


@register_neuron("cif")
def _cif(threshold, *, source: SourceInfo, negative_spikes: bool = True, spike_cap: bool = True) -> SpikingNeuron:
    """Consistent IF neuron for wake-sleep conversion (use a clip-floor source, T = L)."""
    return CIFNeuron(threshold, negative_spikes, spike_cap)

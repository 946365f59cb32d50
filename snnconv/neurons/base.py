"""The base class of every spiking neuron module, and what a neuron knows of its source."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import SnnconvError
from ..functional import WindowContext, check_scale, check_threshold, check_window, compute_dtype


@dataclass(frozen=True)
class SourceInfo:
    """What a neuron may want to know about the ANN activation it replaces.

    Raises:
        Nothing: the converter fills it from the activation it has already checked.
    """

    levels: int | None = None  # quantisation levels L (None for ReLU / plain clip)
    shift: float = 0.0  # phi of the source activation (1/2 for QCFS, 0 for clip-floor)


# v(0) = theta/2 for IF and GN on every source (QCFS, clip, ReLU): the shift that QCFS
# builds in (phi = 1/2) and that Deng & Gu (ICLR 2021) and SNN Calibration prescribe for
# ReLU sources; docs/methods.md, section 2. ``initial_potential`` overrides it.
DEFAULT_INITIAL_POTENTIAL = 0.5


def _phi(initial_potential: float | None, source: SourceInfo) -> float:
    return DEFAULT_INITIAL_POTENTIAL if initial_potential is None else initial_potential


def _v0(phi: float, group_size: int = 1) -> str:
    """v(0) = phi * theta / tau, short: ``0``, ``θ/2``, ``θ/(2τ)``, ``0.3·θ``, ``0.3·θ/τ``."""
    unit = "θ" if group_size == 1 else "θ/τ"
    if phi == 0:
        return "0"
    if phi == 1:
        return unit
    if phi == 0.5:
        return "θ/2" if group_size == 1 else "θ/(2τ)"
    return f"{phi:g}·{unit}"


class SpikingNeuron(nn.Module):
    """Base class: holds theta as a buffer and validates the window.

    Class attributes:
        causal: the output at step t depends only on inputs up to t, so one run of the
            largest T yields every shorter T as a prefix.
        sleeps: the neuron understands a wake window followed by sleep steps.
        stochastic: the neuron draws random numbers (takes a generator).
        supports_inplace: :meth:`dynamics` may overwrite its input window when the
            context says ``inplace``; subclasses that do not say so always get
            ``inplace=False``.
        accepts_offset: the neuron integrates a per-neuron extra v(0)
            (:meth:`set_potential_offset`).

    Properties ``units`` (spike units per theta: an output step is theta / units) and
    ``spike_range`` (the fewest and most spike units per element and step) describe the
    output lattice; the registry-wide property tests check every neuron against them.

    Windows may be float16/bfloat16/float32/float64; half-precision windows are integrated
    in float32 and the outputs cast back (see :func:`snnconv.functional.compute_dtype`).
    A subclass implements :meth:`dynamics`.

    Raises:
        SnnconvError: (construction) ``threshold`` is not finite and > 0.
    """

    causal: bool = True
    sleeps: bool = False
    stochastic: bool = False
    supports_inplace: bool = False
    accepts_offset: bool = False

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

        The first three become one :class:`snnconv.functional.WindowContext` handed to
        :meth:`dynamics`. float16/bfloat16 windows are integrated in float32 and cast back.

        Returns:
            ``[T, batch, ...]`` outputs (spike units times theta / units), ``x``'s dtype.

        Raises:
            SnnconvError: ``wake_steps`` is not None or an integer >= 1; theta does not
                broadcast to ``x``'s ``[batch, ...]`` shape; and, with ``validate``, the
                window is not a finite floating-point ``[T >= 1, batch, ...]`` tensor or
                theta and the window do not fit its dtype.
        """
        context = WindowContext(wake_steps, generator, inplace)
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
            x, out_dtype = x.to(work), x.dtype
            context = replace(context, inplace=True)
        else:
            out_dtype = work
        if context.inplace and not self.supports_inplace:
            context = replace(context, inplace=False)
        with torch.no_grad():
            out = self.dynamics(x, threshold, context)
        return out if out.dtype == out_dtype else out.to(out_dtype)

    def dynamics(self, x: torch.Tensor, threshold: torch.Tensor, context: WindowContext) -> torch.Tensor:
        """The neuron's rule over a checked window ``x`` (float32/float64) with theta in its dtype.

        Raises:
            NotImplementedError: a subclass did not implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement dynamics(x, threshold, context)")

    def set_potential_offset(self, offset: torch.Tensor | None) -> None:
        """Add ``offset`` to v(0) (input units, broadcastable to ``[batch, ...]`` without
        the batch dimension), or remove it with None. Only neurons with
        ``accepts_offset`` integrate it (IF, GN, TPP); SNN Calibration's potential
        calibration sets it (``snnconv.convert.potential_calibration``).

        Raises:
            SnnconvError: the neuron has no per-neuron initial potential, or ``offset``
                is not a finite floating-point tensor.
        """
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

    def spike_units(self, out: torch.Tensor) -> torch.Tensor:
        """Spike events per element and step: |out| / (theta / units), rounded to integers.

        Outputs are whole multiples of theta / units; rounding removes the float error of
        that product (a float16 output is the multiple rounded to 11 bits).

        Raises:
            Nothing of its own; torch raises ``RuntimeError`` if ``out`` does not
            broadcast with theta.
        """
        work = compute_dtype(out.dtype)
        return (out.to(work).abs() * (self.units / self.threshold.to(work))).round_()

    def _theta_repr(self) -> str:
        """``θ=0.5``, ``θ per channel (64)`` or ``θ per neuron (4, 8, 8)``."""
        theta = self.threshold
        if theta.numel() == 1:
            return f"θ={theta.item():.4g}"
        sizes = [n for n in theta.shape if n != 1]
        return f"θ per channel ({sizes[0]})" if len(sizes) == 1 else f"θ per neuron {tuple(theta.shape)}"

    def _offset_repr(self) -> str:
        return " + offset" if self.offset is not None else ""

    def extra_repr(self) -> str:
        return self._theta_repr()

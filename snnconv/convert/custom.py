"""User-written activation modules: map them onto supported ones before tracing.

Checkpoints trained with a paper's own code hold that code's activation classes (a
QCFS written with ``torch.floor`` inside an autograd Function, a clip built with
``torch.where``). ``convert(model, neuron, activations={MyFloor: lambda m: QCFS(
levels=m.t, threshold=float(m.up))})`` swaps each instance for the module the factory
returns, after checking on a probe of inputs that both compute the same function, so a
wrong mapping (levels or threshold misread) is an error, never a silent wrong result.
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import SnnconvError

ActivationFactory = Callable[[nn.Module], nn.Module]
_PROBE_POINTS = 4001
_MISMATCH_FRACTION = 0.002  # probe points allowed to differ (a floor can round the other way at a level edge)


def _probe_scale(replacement: nn.Module) -> float:
    threshold = getattr(replacement, "threshold", None)
    if isinstance(threshold, torch.Tensor) and threshold.numel() == 1 and float(threshold.detach()) > 0:
        return float(threshold.detach())
    if isinstance(replacement, nn.ReLU6):
        return 6.0
    if isinstance(replacement, nn.Hardtanh):
        return float(replacement.max_val)
    return 1.0


# Probe layouts of the same points: a module may take only [B, C, H, W] (unpacks z.shape) or
# broadcast a per-channel lambda [C, 1, 1] against its input.
_PROBE_LAYOUTS = ((-1,), (1, -1), (1, 1, -1), (1, 1, 1, -1), (1, 1, 1, 1, -1))


def _probe(original: nn.Module, replacement: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both modules' outputs on the probe points ``z``, in the first layout both run on,
    broadcast to one shape (a per-channel module gives one row per channel).

    Raises:
        SnnconvError: no layout runs on both, or an output is not one tensor that the
            other broadcasts to (named, with the fix).
    """
    errors = []
    for layout in _PROBE_LAYOUTS:
        try:
            with torch.no_grad():
                want = copy.deepcopy(original).double().eval()(z.reshape(layout))
                got = copy.deepcopy(replacement).double().eval()(z.reshape(layout))
            shape = torch.broadcast_shapes(want.shape, got.shape)
        except Exception as err:  # any failure: try the next layout
            errors.append(f"{type(err).__name__}: {err}".splitlines()[0])
            continue
        return want.expand(shape), got.expand(shape)
    raise SnnconvError(f"{errors[-1] if errors else 'no output'}")


def _same_function(path: str, original: nn.Module, replacement: nn.Module) -> None:
    """Refuse a replacement that differs from the user's module on a probe from -lambda to 2 lambda."""
    scale = _probe_scale(replacement)
    # points off the level edges k * lambda / L: an odd count over an offset range
    z = (torch.linspace(-1.0, 2.0, _PROBE_POINTS, dtype=torch.float64) + 0.000123) * scale
    try:
        want, got = _probe(original, replacement, z)
    except SnnconvError as err:
        raise SnnconvError(
            f"cannot check the activations mapping for {path!r} ({type(original).__name__}): it does not run on probe "
            f"points from -lambda to 2 lambda laid out as [N], [1, N], ... [1, 1, 1, 1, N] ({err}), so its replacement "
            f"{type(replacement).__name__} cannot be checked to compute the same function: make its forward elementwise "
            "on any shape (per-channel parameters broadcast as [C, 1, 1])") from None
    wrong = ((want - got).abs() > 1e-6 * max(1.0, scale)).reshape(-1, want.shape[-1])
    if wrong.double().mean() > _MISMATCH_FRACTION:
        row, at = (int(i) for i in wrong.nonzero()[0])
        raise SnnconvError(
            f"activations mapping for {path!r} ({type(original).__name__}) gives {type(replacement).__name__} that "
            f"computes a different function: at z = {float(z[at]):.4g} the model gives "
            f"{float(want.reshape(-1, want.shape[-1])[row, at]):.4g}, the replacement "
            f"{float(got.reshape(-1, got.shape[-1])[row, at]):.4g}; check the levels and threshold the factory reads "
            "from the module")


def map_activations(model: nn.Module, activations: Mapping[type, ActivationFactory]) -> nn.Module:
    """Replace, in place, every submodule whose class is a key of ``activations`` by ``factory(module)``.

    Args:
        model: the (already copied) source model.
        activations: ``{UserClass: factory}``; ``factory(module)`` returns a supported
            activation (QCFS, ClipFloor, ReLU, ReLU6, Hardtanh(0, m)) computing the same
            function, checked on 4001 probe points from -lambda to 2 lambda.

    Returns:
        ``model``. Raises :class:`SnnconvError` for a malformed mapping, a factory that
        fails or returns something else than a module, or a replacement that computes
        a different function.

    Raises:
        SnnconvError: ``activations`` is not a mapping of classes to factories, ``model``
            is itself a mapped class, a factory fails or returns no module, the replacement
            computes a different function (the first differing probe point is named), the
            module does not run on any probe layout (so no check is possible), or it has a
            forward hook (which the replacement would drop).
    """
    from ..activations import QuantizedClip  # the activations module imports convert

    if not isinstance(activations, Mapping) or not all(isinstance(k, type) for k in activations):
        raise SnnconvError("activations must map module classes to factories, e.g. {MyFloor: lambda m: QCFS(levels=m.t, threshold=m.up)}")
    if isinstance(model, tuple(activations)):
        raise SnnconvError(f"the model itself is a {type(model).__name__}: map the activation classes inside it")
    supported = (QuantizedClip, nn.ReLU, nn.ReLU6, nn.Hardtanh)
    for path, module in list(model.named_modules()):
        kind = next((k for k in activations if isinstance(module, k)), None)
        if kind is None or not path:
            continue
        if module._forward_hooks or module._forward_pre_hooks:
            raise SnnconvError(f"{path!r} ({type(module).__name__}) has a forward hook, which its replacement from the "
                               "activations mapping would drop: remove the hook (handle.remove()) before convert")
        try:
            replacement = activations[kind](module)
        except Exception as err:
            raise SnnconvError(f"the activations factory for {kind.__name__} failed on {path!r} ({type(err).__name__}: {err})") from err
        if not isinstance(replacement, supported):
            raise SnnconvError(
                f"the activations factory for {kind.__name__} returned {type(replacement).__name__}: return QCFS, ClipFloor, "
                "nn.ReLU, nn.ReLU6 or nn.Hardtanh(0, max)"
            )
        replacement = replacement.to(next((p.dtype for p in model.parameters()), torch.float32))
        _same_function(path, module, replacement)
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, replacement)
    return model

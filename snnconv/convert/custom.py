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


def _same_function(path: str, original: nn.Module, replacement: nn.Module) -> None:
    """Refuse a replacement that differs from the user's module on a probe from -lambda to 2 lambda."""
    scale = _probe_scale(replacement)
    # points off the level edges k * lambda / L: an odd count over an offset range
    z = (torch.linspace(-1.0, 2.0, _PROBE_POINTS, dtype=torch.float64) + 0.000123) * scale
    try:
        with torch.no_grad():
            want = copy.deepcopy(original).double().eval()(z)
            got = copy.deepcopy(replacement).double().eval()(z)
    except Exception:  # a module that needs a particular shape cannot be probed this way
        return
    if not isinstance(want, torch.Tensor) or want.shape != got.shape:
        return
    wrong = (want - got).abs() > 1e-6 * max(1.0, scale)
    if wrong.double().mean() > _MISMATCH_FRACTION:
        at = int(wrong.nonzero()[0])
        raise SnnconvError(
            f"activations mapping for {path!r} ({type(original).__name__}) gives {type(replacement).__name__} that "
            f"computes a different function: at z = {float(z[at]):.4g} the model gives {float(want[at]):.4g}, the "
            f"replacement {float(got[at]):.4g}; check the levels and threshold the factory reads from the module"
        )


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
            is itself a mapped class, a factory fails or returns no module, or the replacement
            computes a different function (the first differing probe point is named).
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

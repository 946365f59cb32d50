"""Model registry: ``@register_model`` a builder, ``create_model(name, **kw)`` builds it."""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from ..errors import SnnconvError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``builder`` under its function name.

    Builders take JSON-serialisable keyword arguments only (``num_classes``,
    ``in_channels``, ``activation``, ``levels``, ...), so a checkpoint that stores
    the name and the arguments rebuilds the model.
    """
    name = builder.__name__
    if name in _MODELS:
        raise SnnconvError(f"model {name!r} is already registered: pick another name")
    _MODELS[name] = builder
    return builder


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments ``kwargs``."""
    try:
        builder = _MODELS[name]
    except KeyError:
        raise SnnconvError(f"unknown model {name!r}: choose one of {', '.join(list_models())}") from None
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise SnnconvError(f"model {name!r} has no argument {', '.join(unknown)}: it takes {', '.join(accepted)}")
    try:
        return builder(**kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        if isinstance(err, SnnconvError):
            raise
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise SnnconvError(f"model {name!r} cannot be built from {shown} ({err}): check the model arguments") from err

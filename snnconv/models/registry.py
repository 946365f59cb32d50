"""Model registry: ``@register_model`` a builder, ``create_model(name, **kw)`` builds it.

The detector lives in the detection task: ``yolo_detector`` is listed here by name and
:mod:`snnconv.detection.model` is imported on its first lookup, so importing the core
package never loads the detection code.
"""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from ..errors import SnnconvError
from ..registry import Registry

Builder = Callable[..., nn.Module]
_MODELS: Registry[Builder] = Registry("model", lazy={"yolo_detector": "snnconv.detection.model"})


def register_model(builder: Builder) -> Builder:
    """Decorator: register ``builder`` under its function name.

    Builders take JSON-serialisable keyword arguments only (``num_classes``,
    ``in_channels``, ``activation``, ``levels``, ...), so a checkpoint that stores
    the name and the arguments rebuilds the model.

    Raises:
        SnnconvError: a model of that name is already registered (the message names where).
    """
    return _MODELS.add(builder.__name__, builder)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models matching the ``fnmatch`` wildcard ``pattern``
    (``"resnet*"``), sorted."""
    return _MODELS.names(pattern)


def create_model(name: str | Builder, **kwargs) -> nn.Module:
    """Build the registered model ``name`` (a name or the registered builder) with keyword arguments ``kwargs``.

    Raises:
        SnnconvError: the model is not registered, ``kwargs`` holds an argument the
            builder does not take, or the builder rejects the values.
    """
    builder = _MODELS.get(name)
    name = _MODELS.name_of(builder)
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

"""The neuron registry: names -> factories ``factory(threshold, *, source, **options)``.

Each neuron's module registers its own factory next to its class (``neurons/if_.py``,
``group.py``, ``tpp.py``, ``cif.py``).
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from ..errors import SnnconvError
from ..registry import Registry
from .base import SourceInfo, SpikingNeuron

NeuronFactory = Callable[..., SpikingNeuron]
_NEURONS: Registry[NeuronFactory] = Registry("neuron")


def register_neuron(name: str) -> Callable[[NeuronFactory], NeuronFactory]:
    """Decorator: register ``factory(threshold, *, source: SourceInfo, **options)`` as ``name``.

    Raises:
        SnnconvError: (when decorating) a neuron of that name is already registered (the
            message names where).
    """
    return _NEURONS.register(name)


def list_neurons(pattern: str = "*") -> list[str]:
    """Names of the registered neurons matching the ``fnmatch`` wildcard ``pattern``, sorted.

    Raises:
        Nothing.
    """
    return _NEURONS.names(pattern)


def neuron_options(name: str) -> list[str]:
    """The keyword options a registered neuron accepts (besides threshold and source).

    Raises:
        SnnconvError: ``name`` is not a registered neuron.
    """
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

    Raises:
        SnnconvError: ``name`` is not registered, an option is not one of the neuron's,
            an option's value is invalid, or ``threshold`` is not finite and > 0.
    """
    factory = _lookup(name)
    allowed = neuron_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise SnnconvError(
            f"neuron {name!r} has no option {', '.join(unknown)}: its options are {', '.join(allowed) or 'none'}"
        )
    return factory(threshold, source=source or SourceInfo(), **options)

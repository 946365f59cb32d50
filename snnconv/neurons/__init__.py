"""Spiking neurons as ``nn.Module`` wrappers over :mod:`snnconv.functional`, and their registry.

Every neuron takes a whole input window ``[T, batch, ...]`` and returns the window of
its outputs (spike units times theta) of the same shape. State lives inside one call:
there is nothing to reset between calls.

One file per neuron holds its module and its registration: ``if_.py`` (IF),
``group.py`` (GN), ``tpp.py`` (TPP), ``cif.py`` (CIF); ``base.py`` holds the base class
:class:`SpikingNeuron` and ``registry.py`` the registry.

>>> import torch
>>> from snnconv.neurons import create_neuron
>>> create_neuron("if", 2.0)
IFNeuron(θ=2, v0=θ/2)
>>> create_neuron("if", 1.0)(torch.full((4, 1, 1), 0.6)).flatten().tolist()
[1.0, 0.0, 1.0, 0.0]

Add a neuron with one decorated factory ``factory(threshold, *, source, **options)``;
the class attributes ``causal``, ``sleeps`` and ``stochastic`` of the module it returns
say what kind of neuron it is:

>>> from snnconv.neurons import IFNeuron, SourceInfo, register_neuron
>>> @register_neuron("if_from_zero")
... def if_from_zero(threshold, *, source: SourceInfo) -> IFNeuron:
...     return IFNeuron(threshold, initial_potential=0.0)
>>> create_neuron("if_from_zero", 1.0)(torch.full((4, 1, 1), 0.6)).flatten().tolist()
[0.0, 1.0, 0.0, 1.0]

The registry-wide tests then check it for shapes, dtypes, determinism and bad input.
"""
# Names the single module this package replaced offered, all still importable from here:
# the functional records and checks, SnnconvError, and the registry's private names.
from ..errors import SnnconvError  # noqa: F401
from ..functional import (  # noqa: F401
    CIFParams,
    GroupParams,
    TPPParams,
    WindowContext,
    check_scale,
    check_threshold,
    check_window,
    cif_window,
    compute_dtype,
    group_window,
    tpp_window,
)
from .base import DEFAULT_INITIAL_POTENTIAL, SourceInfo, SpikingNeuron, _phi  # noqa: F401
from .registry import (  # noqa: F401
    _NEURONS,
    NeuronFactory,
    _lookup,
    create_neuron,
    list_neurons,
    neuron_options,
    register_neuron,
)

# One file per neuron: importing it registers the neuron.
from .if_ import IFNeuron, _if  # noqa: F401, E402
from .group import GroupNeuron, _gn  # noqa: F401, E402
from .tpp import TPPNeuron, _tpp  # noqa: F401, E402
from .cif import CIFNeuron, _cif  # noqa: F401, E402

__all__ = [
    "CIFNeuron",
    "DEFAULT_INITIAL_POTENTIAL",
    "GroupNeuron",
    "IFNeuron",
    "NeuronFactory",
    "SourceInfo",
    "SpikingNeuron",
    "TPPNeuron",
    "create_neuron",
    "list_neurons",
    "neuron_options",
    "register_neuron",
]

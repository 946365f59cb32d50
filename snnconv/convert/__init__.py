"""Conversion: a chain of small torch.fx passes, each copying nothing but the input once.

    trace -> remove_dropout -> fold_batchnorm -> mark_activation_sites
          -> calibrate_thresholds (ReLU sources) -> swap_to_neurons -> SpikingNetwork
"""
from __future__ import annotations

import copy
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import SnnconvError
from ..inputs import check_input
from ..network import SpikingNetwork
from ..neurons import list_neurons
from .activation_sites import ActivationSite, activation_sites, mark_activation_sites
from .calibrate import calibrate_thresholds, parse_calibration_method
from .custom import ActivationFactory, map_activations
from .fold_bn import fold_batchnorm
from .remove_dropout import remove_dropout
from .swap_neurons import swap_to_neurons
from .trace import trace


def prepare(model: nn.Module, activations: Mapping[type, ActivationFactory] | None = None,
            max_pool: str | None = None) -> torch.fx.GraphModule:
    """Trace a copy of ``model`` and run the structural passes (no neurons yet).

    The result computes the same function as ``model`` in eval mode (BN folded,
    dropout gone) with every activation marked as an :class:`ActivationSite`;
    ``activations`` maps user activation classes first (:func:`map_activations`);
    ``max_pool="gate"`` gates max pooling after spiking layers (:class:`MaxPoolGate`).
    """
    if activations:
        if not isinstance(model, nn.Module):
            raise SnnconvError(f"convert() needs a torch.nn.Module, got {type(model).__name__}")
        model = map_activations(copy.deepcopy(model), activations)
    graph_module = trace(model, copy_model=not activations)
    remove_dropout(graph_module)
    fold_batchnorm(graph_module)
    mark_activation_sites(graph_module, max_pool)
    return graph_module


def convert(
    model: nn.Module,
    neuron: str = "if",
    *,
    calibration: torch.Tensor | Iterable | None = None,
    calibration_method: str | float = "99.9",
    permute: str | None = None,
    activations: Mapping[type, ActivationFactory] | None = None,
    max_pool: str | None = None,
    **neuron_options,
) -> SpikingNetwork:
    """Convert a trained ANN into a spiking network; ``model`` is never modified.

    Args:
        model: any torch.fx-traceable ``nn.Module`` whose layers between activations are
            affine (conv, linear, average pooling, BatchNorm anywhere, add, cat, reshape,
            scaling by constants: README "What converts") with ReLU, QCFS or ClipFloor
            activations (modules or functions); dropout of any spelling is removed.
        neuron: a registered neuron name (:func:`snnconv.list_neurons`).
        calibration: data to set thresholds of plain-ReLU activations (tensor ``[N, ...]``
            or iterable of batches); QCFS/clip-floor layers use theta = lambda.
        calibration_method: ``"max"`` or a percentile such as ``99.9``.
        permute: ``"per-neuron"`` or ``"per-layer"``: shuffle each spiking layer's output
            spike trains in time before the next layer reads them (temporal-misalignment
            experiment); redrawn per sample. A default for :func:`simulate`.
        activations: ``{UserClass: factory}`` for activation modules written in the
            source's own code, e.g. ``{MyFloor: lambda m: QCFS(levels=m.t,
            threshold=float(m.up))}``; each replacement is checked to compute the same
            function (:func:`snnconv.convert.map_activations`).
        max_pool: ``"gate"`` converts max pooling after a spiking layer with the
            max-pool gate of Rueckauer et al. 2017 (approximate; IF, GN, TPP); by
            default it is refused. Max pooling on the analog input is always exact.
        **neuron_options: passed to the neuron factory (e.g. ``group_size=4``).

    Returns:
        A :class:`SpikingNetwork`; ``snn(x, T)`` returns outputs ``[T, batch, ...]``.
    """
    if neuron not in list_neurons():
        raise SnnconvError(f"unknown neuron {neuron!r}: choose one of {', '.join(list_neurons())}")
    if max_pool == "gate" and neuron == "cif":
        raise SnnconvError("max_pool='gate' follows running spike counts, which CIF's negative spikes and sleep phase "
                           "break: use if, gn or tpp, or average pooling")
    parse_calibration_method(calibration_method)  # a bad method (say a percentile of 150) is refused even without ReLU sites
    graph_module = prepare(model, activations, max_pool)
    if calibration is not None:
        calibration = _checked_batches(graph_module, calibration)
        calibrate_thresholds(graph_module, calibration, calibration_method)
    dtype = next((p.dtype for p in graph_module.parameters()), torch.float32)
    swap_to_neurons(graph_module, neuron, **neuron_options)
    graph_module.to(dtype)
    snn = SpikingNetwork(graph_module, neuron, dict(neuron_options), permute=permute)
    snn.max_pool = max_pool  # layerwise_error() prepares the source the same way
    return snn


def _checked_batches(graph_module: torch.fx.GraphModule, calibration) -> list[torch.Tensor]:
    """Calibration data as checked batches (:func:`snnconv.inputs.check_input`), all checked before any is used."""
    if isinstance(calibration, torch.Tensor):
        return [check_input(graph_module, calibration, "calibration data")]
    try:
        batches = list(calibration)
    except TypeError:
        raise SnnconvError(f"calibration must be a tensor [N, ...] or an iterable of batches, got {type(calibration).__name__}") from None
    return [check_input(graph_module, b[0] if isinstance(b, (tuple, list)) else b, "calibration data") for b in batches]


__all__ = [
    "ActivationSite",
    "activation_sites",
    "calibrate_thresholds",
    "convert",
    "fold_batchnorm",
    "map_activations",
    "mark_activation_sites",
    "prepare",
    "remove_dropout",
    "swap_to_neurons",
    "trace",
]

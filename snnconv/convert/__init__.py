"""Conversion: a chain of small torch.fx passes, each copying nothing but the input once.

    trace -> remove_dropout -> fold_batchnorm -> mark_activation_sites
          -> calibrate_thresholds (ReLU sources) -> swap_to_neurons -> SpikingNetwork
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..errors import SnnconvError
from ..network import SpikingNetwork
from ..neurons import list_neurons
from .activation_sites import ActivationSite, activation_sites, mark_activation_sites
from .calibrate import calibrate_thresholds, parse_calibration_method
from .fold_bn import fold_batchnorm
from .remove_dropout import remove_dropout
from .swap_neurons import swap_to_neurons
from .trace import trace


def prepare(model: nn.Module) -> torch.fx.GraphModule:
    """Trace a copy of ``model`` and run the structural passes (no neurons yet).

    The result computes the same function as ``model`` in eval mode (BN folded,
    dropout gone) with every activation marked as an :class:`ActivationSite`.
    """
    graph_module = trace(model)
    remove_dropout(graph_module)
    fold_batchnorm(graph_module)
    mark_activation_sites(graph_module)
    return graph_module


def convert(
    model: nn.Module,
    neuron: str = "if",
    *,
    calibration: torch.Tensor | Iterable | None = None,
    calibration_method: str | float = "99.9",
    permute: str | None = None,
    **neuron_options,
) -> SpikingNetwork:
    """Convert a trained ANN into a spiking network; ``model`` is never modified.

    Args:
        model: an ``nn.Module`` built from conv/linear/avg-pool/add/cat/flatten/nearest
            upsampling layers and ReLU, QCFS or ClipFloor activations (modules or functions).
        neuron: a registered neuron name (:func:`snnconv.list_neurons`).
        calibration: data to set thresholds of plain-ReLU activations (tensor ``[N, ...]``
            or iterable of batches); QCFS/clip-floor layers use theta = lambda.
        calibration_method: ``"max"`` or a percentile such as ``99.9``.
        permute: ``"per-neuron"`` or ``"per-layer"``: shuffle each spiking layer's output
            spike trains in time before the next layer reads them (temporal-misalignment
            experiment); redrawn per sample. A default for :func:`simulate`.
        **neuron_options: passed to the neuron factory (e.g. ``group_size=4``).

    Returns:
        A :class:`SpikingNetwork`; ``snn(x, T)`` returns outputs ``[T, batch, ...]``.
    """
    if neuron not in list_neurons():
        raise SnnconvError(f"unknown neuron {neuron!r}: choose one of {', '.join(list_neurons())}")
    parse_calibration_method(calibration_method)  # a bad method (say a percentile of 150) is refused even without ReLU sites
    graph_module = prepare(model)
    if calibration is not None:
        calibrate_thresholds(graph_module, calibration, calibration_method)
    dtype = next((p.dtype for p in graph_module.parameters()), torch.float32)
    swap_to_neurons(graph_module, neuron, **neuron_options)
    graph_module.to(dtype)
    return SpikingNetwork(graph_module, neuron, dict(neuron_options), permute=permute)


__all__ = [
    "ActivationSite",
    "activation_sites",
    "calibrate_thresholds",
    "convert",
    "fold_batchnorm",
    "mark_activation_sites",
    "prepare",
    "remove_dropout",
    "swap_to_neurons",
    "trace",
]

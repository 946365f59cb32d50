"""Conversion: a chain of small torch.fx passes, each copying nothing but the input once.

    trace -> drop_no_op_casts -> remove_dropout -> fold_batchnorm -> mark_activation_sites
          -> calibrate_thresholds (ReLU sources: max, percentile or MSE, per layer or channel)
          -> swap_to_neurons -> SpikingNetwork
          -> SNN Calibration (optional: bias, potential, weight calibration; snn_calibration.py)
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import SnnconvError
from ..inputs import check_input
from ..network import SpikingNetwork
from ..neurons import list_neurons
from .activation_sites import ActivationSite, activation_sites, mark_activation_sites
from .calibrate import calibrate_thresholds, parse_threshold
from .casts import drop_no_op_casts
from .calibration_data import check_calibration_data, check_calibration_options
from .custom import ActivationFactory, map_activations
from .snn_calibration import calibrate_snn, check_mode
from .weight_calibration import WeightCalibration
from .fold_bn import fold_batchnorm
from .remove_dropout import remove_dropout
from .swap_neurons import swap_to_neurons
from .trace import copy_of, refuse_meta, trace, unwrap


def prepare(model: nn.Module, activations: Mapping[type, ActivationFactory] | None = None,
            max_pool: str | None = None) -> torch.fx.GraphModule:
    """Trace a copy of ``model`` and run the structural passes (no neurons yet).

    The result computes the same function as ``model`` in eval mode (BN folded,
    dropout gone) with every activation marked as an :class:`ActivationSite`;
    ``activations`` maps user activation classes first (:func:`map_activations`);
    ``max_pool="gate"`` gates max pooling after spiking layers (:class:`MaxPoolGate`).

    Raises:
        SnnconvError: ``model`` is not an ``nn.Module`` or cannot be traced by torch.fx;
            an ``activations`` mapping is malformed or computes another function
            (:func:`map_activations`); a BatchNorm without running statistics; an unknown
            ``max_pool``; or a layer with no faithful spiking form (named, with the fix).
    """
    if activations:
        if not isinstance(model, nn.Module):
            raise SnnconvError(f"convert() needs a torch.nn.Module, got {type(model).__name__}")
        refuse_meta(unwrap(model))  # before the mapping's probes run its modules
        model = map_activations(copy_of(unwrap(model)), activations)
    graph_module = trace(model, copy_model=not activations)
    drop_no_op_casts(graph_module)
    remove_dropout(graph_module)
    fold_batchnorm(graph_module)
    mark_activation_sites(graph_module, max_pool)
    return graph_module


def convert(
    model: nn.Module,
    neuron: str = "if",
    *,
    calibration: torch.Tensor | Iterable | None = None,
    threshold: str | float | None = None,
    per_channel: bool = False,
    snn_calibration: str | None = None,
    calibration_steps: int | None = None,
    calibration_images: int | None = None,
    calibration_method: str | float | None = None,
    weight_calibration: WeightCalibration | dict | None = None,
    calibration_seed: int = 0,
    calibration_target: str = "output",
    progress: bool = False,
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
        calibration: data to set thresholds of plain-ReLU activations (float tensor
            ``[N, ...]`` or iterable of batches); QCFS/clip-floor layers use theta = lambda.
        threshold: how ReLU thresholds are set: ``"max"``, a percentile such as ``99.9``
            (the default), or ``"mse"``: SNN Calibration's search for the theta minimising
            the T-step quantisation error (needs ``calibration_steps``); docs/methods.md 2b.
        per_channel: one threshold per output channel instead of per layer.
        snn_calibration: SNN Calibration after conversion (Li et al., ICML 2021):
            ``"light"`` (bias calibration), ``"advanced"`` (weight calibration, then
            potential calibration), or ``"bias"`` / ``"potential"`` alone; layer by layer
            on ``calibration``, for T = ``calibration_steps``. IF, GN and TPP neurons.
        calibration_steps: T that ``"mse"`` and ``snn_calibration`` calibrate for.
        calibration_images: use only the first N calibration images.
        calibration_method: the old name of ``threshold`` (an alias).
        weight_calibration: :class:`WeightCalibration` (or its fields as a dict) for
            ``"advanced"``: iterations, learning rate, mini-batch size.
        calibration_seed: seeds calibration's SNN runs and samples.
        progress: tqdm progress bars for the calibration passes.
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
        ``snn.calibration`` records the calibration choices (``threshold``: the method
        that set plain-ReLU thresholds from data, None when none was set so, e.g. on a
        QCFS source; ``per_channel``, ``snn_calibration``, ``calibration_steps``,
        ``images``) and, with ``snn_calibration``, every layer's pre-activation error
        before and after and the seconds taken (``"snnc"``).

    Raises:
        SnnconvError: unknown neuron or option, bad calibration data (dtype, shape,
        channels, NaN, too few values for the percentile), ``"mse"`` or
        ``snn_calibration`` without ``calibration_steps`` or data, a calibration keyword
        of the wrong type or value (:func:`check_calibration_options`), ``per_channel``
        on a model with no plain-ReLU threshold to set; all before any work, and
        ``model`` is never changed.
    """
    if neuron not in list_neurons():
        raise SnnconvError(f"unknown neuron {neuron!r}: choose one of {', '.join(list_neurons())}")
    if max_pool == "gate" and neuron == "cif":
        raise SnnconvError("max_pool='gate' follows running spike counts, which CIF's negative spikes and sleep phase "
                           "break: use if, gn or tpp, or average pooling")
    if threshold is not None and calibration_method is not None and parse_threshold(threshold) != parse_threshold(calibration_method):
        raise SnnconvError("give threshold= or its old name calibration_method=, not both")
    method = parse_threshold(threshold if threshold is not None else calibration_method if calibration_method is not None else "99.9")
    check_mode(snn_calibration, neuron, calibration_steps)
    if method == "mse":
        if isinstance(calibration_steps, bool) or not isinstance(calibration_steps, int) or calibration_steps < 1:
            raise SnnconvError(f"threshold='mse' searches theta for one T: pass calibration_steps=T (an integer >= 1), got {calibration_steps!r}")
    if snn_calibration is not None and calibration is None:
        raise SnnconvError(f"snn_calibration={snn_calibration!r} needs calibration images: pass calibration=x")
    weights = check_calibration_options(per_channel, calibration_steps, calibration_seed, calibration_target, weight_calibration)
    graph_module = prepare(model, activations, max_pool)
    to_calibrate = [name for name, site in activation_sites(graph_module) if site.threshold is None]
    if per_channel and not to_calibrate:
        raise SnnconvError(f"per_channel=True (--per-channel) sets the thresholds of plain ReLU activations, and "
                           f"{type(model).__name__} has none: its QCFS / clip-floor thresholds are trained; drop per_channel")
    batches = None
    if calibration is not None:
        if isinstance(calibration, torch.Tensor):  # simulate()'s own message for an empty tensor too
            calibration = check_input(graph_module, calibration, "calibration data")
        batches = check_calibration_data(graph_module, calibration, calibration_images)  # simulate()'s checks, batch by batch
        levels = None
        if calibration_steps is not None:
            group = neuron_options.get("group_size", 4) if neuron == "gn" else 1
            levels = int(calibration_steps) * (group if isinstance(group, int) and not isinstance(group, bool) else 1)
        calibrate_thresholds(graph_module, batches, method, per_channel=per_channel, levels=levels, seed=calibration_seed)
    ann = copy.deepcopy(graph_module) if snn_calibration is not None else None
    dtype = next((p.dtype for p in graph_module.parameters()), torch.float32)
    swap_to_neurons(graph_module, neuron, **neuron_options)
    graph_module.to(dtype)
    snn = SpikingNetwork(graph_module, neuron, dict(neuron_options), permute=permute)
    snn.max_pool = max_pool  # layerwise_error() prepares the source the same way
    record: dict = {"threshold": method if calibration is not None and to_calibrate else None, "per_channel": per_channel,
                    "snn_calibration": snn_calibration, "calibration_steps": calibration_steps,
                    "images": sum(b.shape[0] for b in batches) if batches and (to_calibrate or snn_calibration) else 0}
    if snn_calibration is not None:
        record["snnc"] = calibrate_snn(ann, snn, batches, snn_calibration, calibration_steps, calibration_seed, weights, progress,
                                       calibration_target)
        if snn_calibration == "advanced":
            record["weight_calibration_settings"] = dataclasses.asdict(weights)
    snn.calibration = record
    return snn


__all__ = [
    "ActivationSite",
    "WeightCalibration",
    "activation_sites",
    "calibrate_snn",
    "calibrate_thresholds",
    "check_calibration_data",
    "convert",
    "drop_no_op_casts",
    "fold_batchnorm",
    "map_activations",
    "mark_activation_sites",
    "prepare",
    "remove_dropout",
    "swap_to_neurons",
    "trace",
]

"""Check calibration data once, before any pass runs, and hand it out in batches.

Every problem is one :class:`SnnconvError` line naming the fix, raised before a
threshold, bias or weight is set, so a failed conversion leaves nothing half-done.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

import torch
from torch import fx

from ..errors import SnnconvError
from ..inputs import check_input
from .layer_probe import TARGETS
from .weight_calibration import WeightCalibration


def _as_tensors(data: torch.Tensor | Iterable) -> list[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        return [data]
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise SnnconvError(
            f"calibration data must be a tensor [N, ...] or an iterable of batches, got {type(data).__name__}"
        )
    batches = []
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if not isinstance(x, torch.Tensor):
            raise SnnconvError(f"calibration batches must be tensors (or (x, y) pairs), got {type(x).__name__}")
        batches.append(x)
    return batches


def check_calibration_data(
    graph_module: fx.GraphModule,
    data: torch.Tensor | Iterable,
    images: int | None = None,
    batch_size: int = 32,
) -> list[torch.Tensor]:
    """Validate ``data`` for ``graph_module`` and return it as batches of ``batch_size``.

    Args:
        graph_module: the prepared ANN graph (:func:`snnconv.convert.prepare`).
        data: a tensor ``[N, ...]`` or an iterable of batches (tensors or (x, y) pairs).
        images: keep the first ``images`` samples (all when None); must be >= 1.
        batch_size: samples per returned batch.

    Returns:
        A list of float tensors on the model's device and dtype, ``[<= batch_size, ...]``.

    Raises:
        SnnconvError: data that is neither a tensor nor an iterable of tensors (a dict,
        a string, a numpy array), empty data, what :func:`snnconv.inputs.check_input`
        refuses (non-float dtype such as uint8 images not yet normalised, no batch
        dimension, the wrong rank or channel count for the first layer, NaN/inf),
        batches of different shapes, a shape the model cannot run, or ``images`` < 1.
    """
    if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 1):
        raise SnnconvError(f"the number of calibration images must be an integer >= 1, got {images!r}")
    tensors = [t for t in _as_tensors(data) if t.numel()]
    if not tensors:
        raise SnnconvError("calibration data is empty: pass a tensor or loader with at least one image")
    # simulate()'s checks and messages (dtype, rank, channels, NaN/inf), batch by batch
    tensors = [check_input(graph_module, t, "calibration data") for t in tensors]
    shape = tuple(tensors[0].shape[1:])
    for t in tensors:
        if tuple(t.shape[1:]) != shape:
            raise SnnconvError(
                f"calibration batches must share one shape [N, ...], got {tuple(t.shape)} after {(None, *shape)}: "
                "stack images of one size"
            )
    x = torch.cat(tensors)
    if images is not None:
        x = x[:images]
    reference = next(iter(graph_module.parameters()), None)
    if reference is not None:
        x = x.to(device=reference.device, dtype=reference.dtype)
    try:
        with torch.no_grad():
            graph_module(x[:1])
    except Exception as err:  # noqa: BLE001 - any failure here is a shape mismatch to report
        raise SnnconvError(
            f"calibration data of shape {tuple(x.shape)} does not fit the model ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:160]}): pass images of the training data's shape"
        ) from None
    return list(x.split(batch_size))


def check_calibration_options(per_channel, calibration_steps, calibration_seed, calibration_target: str,
                              weight_calibration) -> WeightCalibration:
    """Check :func:`snnconv.convert`'s calibration keywords before any work; return the
    weight-calibration settings (defaults when ``weight_calibration`` is None).

    Args:
        per_channel: must be True or False.
        calibration_steps: None or an integer T >= 1.
        calibration_seed: an integer.
        calibration_target: ``"output"`` or ``"preactivation"``.
        weight_calibration: None, a :class:`WeightCalibration`, or a dict of its fields.

    Raises:
        SnnconvError: any of them of the wrong type or value (one line naming the keyword
            and what it takes), or a ``weight_calibration`` dict with an unknown key.
    """
    if not isinstance(per_channel, bool):
        raise SnnconvError(f"per_channel must be True or False, got {per_channel!r}")
    if calibration_steps is not None and (isinstance(calibration_steps, bool) or not isinstance(calibration_steps, int)
                                          or calibration_steps < 1):
        raise SnnconvError(f"calibration_steps must be None or the T to calibrate for (an integer >= 1), got {calibration_steps!r}")
    if isinstance(calibration_seed, bool) or not isinstance(calibration_seed, int):
        raise SnnconvError(f"calibration_seed must be an integer, got {calibration_seed!r}")
    if calibration_target not in TARGETS:
        raise SnnconvError(f"the calibration target must be one of {', '.join(TARGETS)}, got {calibration_target!r}")
    if weight_calibration is None:
        return WeightCalibration()
    if isinstance(weight_calibration, WeightCalibration):
        return weight_calibration
    if not isinstance(weight_calibration, Mapping):
        raise SnnconvError(f"weight_calibration must be a WeightCalibration or a dict of its fields, got {type(weight_calibration).__name__}")
    fields = [f.name for f in dataclasses.fields(WeightCalibration)]
    unknown = [k for k in weight_calibration if k not in fields]
    if unknown:
        raise SnnconvError(f"weight_calibration has no setting {unknown[0]!r}: use {', '.join(fields)}")
    return WeightCalibration(**weight_calibration)

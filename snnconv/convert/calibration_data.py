"""Check calibration data once, before any pass runs, and hand it out in batches.

Every problem is one :class:`SnnconvError` line naming the fix, raised before a
threshold, bias or weight is set, so a failed conversion leaves nothing half-done.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import fx, nn

from ..errors import SnnconvError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _first_layer(graph_module: fx.GraphModule) -> nn.Module | None:
    """The first conv/linear module in execution order, if the input reaches one first."""
    modules = dict(graph_module.named_modules())
    for node in graph_module.graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), (*_CONVS, nn.Linear)):
            return modules[node.target]
    return None


def _as_tensors(data: torch.Tensor | Iterable) -> list[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        return [data]
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
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
        SnnconvError: empty data, non-float dtype (e.g. uint8 images not yet normalised),
        NaN/inf, batches of different shapes, a channel count that differs from the
        first layer's ``in_channels``, a shape the model cannot run, or ``images`` < 1.
    """
    if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 1):
        raise SnnconvError(f"the number of calibration images must be an integer >= 1, got {images!r}")
    tensors = [t for t in _as_tensors(data) if t.numel()]
    if not tensors:
        raise SnnconvError("calibration data is empty: pass a tensor or loader with at least one image")
    shape = tuple(tensors[0].shape[1:])
    for t in tensors:
        if not t.is_floating_point():
            raise SnnconvError(
                f"calibration data has dtype {t.dtype}: pass float images normalised like the training data "
                "(e.g. dataset.normalized())"
            )
        if t.dim() < 2 or tuple(t.shape[1:]) != shape:
            raise SnnconvError(
                f"calibration batches must share one shape [N, ...], got {tuple(t.shape)} after {(None, *shape)}: "
                "stack images of one size"
            )
        if not bool(torch.isfinite(t).all()):
            raise SnnconvError("calibration data contains NaN or inf: clean the images before calibrating")
    x = torch.cat(tensors)
    if images is not None:
        x = x[:images]
    first = _first_layer(graph_module)
    if isinstance(first, _CONVS):
        spatial = first.weight.dim() - 2
        if x.dim() != spatial + 2 or x.shape[1] != first.in_channels:
            raise SnnconvError(
                f"calibration data of shape {tuple(x.shape)} does not fit the first layer "
                f"({type(first).__name__} with {first.in_channels} input channels): pass [N, {first.in_channels}, ...] "
                "images like the training data"
            )
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

"""One input check for every path that runs a converted graph.

simulate(), calibration, the layer-wise error, the cost counters and the NIR export all
feed user data to the same graph; each checks it here first, so a wrong input gives the
same one-line error everywhere, before any work: not a tensor, no batch dimension,
integer images, the wrong rank or channel count for the first layer, NaN or inf.
A floating input of another precision is cast to the network's dtype.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import SnnconvError

_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_CONV_FUNCTIONS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_SAME_LAYOUT_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div}
_SAME_LAYOUT_METHODS = {"add", "sub", "mul", "div", "contiguous", "float", "to"}


def first_layer(graph_module: fx.GraphModule) -> tuple[str, str, int, int] | None:
    """(name, kind, rank, channels) of the first conv/linear layer the input reaches
    through layout-preserving ops only (normalisation, scaling), or None.

    rank counts the batch dimension; channels is dim 1 for a conv, the last dim for a linear.

    Raises:
        Nothing: a graph whose input reaches no conv/linear layer gives None.
    """
    from .convert.fold_bn import ChannelAffine  # convert imports this module

    modules = dict(graph_module.named_modules())
    frontier = [n for n in graph_module.graph.nodes if n.op == "placeholder"][:1]
    seen: set[fx.Node] = set()
    while frontier:
        node = frontier.pop(0)
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            module = modules.get(user.target) if user.op == "call_module" else None
            if module is not None and type(module) in _CONVS and user.args and user.args[0] is node:
                return user.target, type(module).__name__, _CONVS[type(module)] + 2, module.in_channels
            if isinstance(module, nn.Linear) and user.args and user.args[0] is node:
                return user.target, "Linear", -1, module.in_features
            if user.op == "call_function" and user.target in _CONV_FUNCTIONS and user.args[0] is node:
                weight = user.args[1]
                if isinstance(weight, fx.Node) and weight.op == "get_attr":
                    w = graph_module.get_parameter(weight.target) if weight.target in dict(graph_module.named_parameters()) else None
                    groups = user.kwargs.get("groups", user.args[6] if len(user.args) > 6 else 1)
                    if w is not None and isinstance(groups, int):
                        return user.name, user.target.__name__, _CONV_FUNCTIONS[user.target] + 2, w.shape[1] * groups
                continue
            passes = (isinstance(module, (nn.Identity, ChannelAffine)) or
                      (user.op == "call_function" and user.target in _SAME_LAYOUT_FUNCTIONS) or
                      (user.op == "call_method" and user.target in _SAME_LAYOUT_METHODS))
            if passes:
                frontier.append(user)
    return None


def check_input(graph_module: fx.GraphModule, x, what: str = "input") -> torch.Tensor:
    """Check ``x`` ``[batch, ...]`` against the graph's first layer; return it on the
    network's device and in its floating dtype.

    Raises:
        SnnconvError: ``x`` is not a tensor, has no batch dimension, is not floating
            point, on the meta device, has the wrong rank or channel count for the first
            conv/linear layer, or holds NaN or inf. The message names ``what`` (``"input"``,
            ``"calibration data"``, ...), the layer and the fix.
    """
    if not isinstance(x, torch.Tensor):
        raise SnnconvError(f"{what} must be a torch.Tensor [batch, ...], got {type(x).__name__}")
    if x.is_meta:
        raise SnnconvError(f"{what} is on the meta device and holds no values: pass real data (a CPU or GPU tensor)")
    if x.dim() >= 2 and x.shape[0] == 0:
        raise SnnconvError(f"{what} is empty: shape {tuple(x.shape)} holds no samples; pass at least one")
    if x.dim() < 2 or x.shape[0] < 1:
        raise SnnconvError(f"{what} must have shape [batch, ...] with batch >= 1, got {tuple(x.shape)}: add the batch dimension (x.unsqueeze(0))")
    if not x.is_floating_point():
        raise SnnconvError(f"{what} is {x.dtype}, not floating point: scale it to floats first (e.g. x.float() / 255, then the training normalisation)")
    layer = first_layer(graph_module)
    if layer is not None:
        name, kind, rank, channels = layer
        if rank > 0 and x.dim() != rank:
            fix = "add the batch dimension (x.unsqueeze(0))" if x.dim() == rank - 1 else f"give {rank} dims"
            raise SnnconvError(f"{what} has shape {tuple(x.shape)} but layer {name!r} ({kind}) takes [batch, {channels}, ...] with {rank} dims: {fix}")
        have = x.shape[1] if rank > 0 else x.shape[-1]
        if have != channels:
            where = "channels (dim 1)" if rank > 0 else "features (last dim)"
            raise SnnconvError(f"{what} has {have} {where} but layer {name!r} ({kind}) takes {channels}: give data shaped like the training data")
    if not bool(torch.isfinite(x).all()):
        raise SnnconvError(f"{what} contains NaN or inf: clean the data first")
    reference = next(iter(graph_module.parameters()), None)
    if reference is None:
        reference = next(iter(graph_module.buffers()), None)
    if reference is not None and reference.is_floating_point():
        x = x.to(device=reference.device, dtype=reference.dtype)
    return x

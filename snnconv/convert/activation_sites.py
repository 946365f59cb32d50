"""Pass: find every activation (module or function) and check every other node is convertible.

Each activation becomes an :class:`ActivationSite` module that computes exactly what
the original did, so calibration can hook it and the swap pass can replace it. An
activation left unconverted is never silently passed through: anything the SNN has
no faithful form for is an error naming the node and the fix.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..activations import QuantizedClip, is_relu_node
from ..errors import SnnconvError


class ActivationSite(nn.Module):
    """One ANN activation, tagged with what its spiking replacement needs.

    Attributes:
        kind: ``"quantized"`` (QCFS / clip-floor), ``"relu"`` or ``"clip"`` (clamp(x, 0, m)).
        levels: L for quantised sources, else None.
        shift: phi of the source (1/2 for QCFS, 0 otherwise).
        threshold: theta = lambda, the clip value, or a calibrated value; None until known.
    """

    def __init__(self, original: nn.Module | None, kind: str, levels: int | None, shift: float, threshold: float | torch.Tensor | None, upper: float | None = None):
        super().__init__()
        self.original = original
        self.kind = kind
        self.levels = levels
        self.shift = shift
        self.threshold = threshold
        self.upper = upper

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.original is not None:
            return self.original(z)
        return torch.clamp(z, min=0.0, max=self.upper)


# Stateless layers the engine runs on the folded [T * batch, ...] tensor. They must be
# linear in (input, bias) so that sleep steps (zero input, biases off) give zero.
SUPPORTED_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Upsample, nn.Unflatten,
)
SUPPORTED_FUNCTIONS = {
    operator.add, operator.getitem, getattr, torch.add, torch.cat, torch.concat, torch.flatten, torch.reshape,
    F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.interpolate, F.linear, F.conv2d,
}
SUPPORTED_METHODS = {"view", "reshape", "flatten", "size", "contiguous", "add", "mean", "permute", "transpose", "squeeze", "unsqueeze"}

_FIXES = {
    nn.MaxPool1d: "replace max pooling by nn.AvgPool (same kernel) and retrain the source ANN",
    nn.MaxPool2d: "replace max pooling by nn.AvgPool2d (same kernel) and retrain the source ANN",
    nn.AdaptiveMaxPool2d: "replace it by nn.AdaptiveAvgPool2d and retrain the source ANN",
}


def _unsupported(what: str, name: str, fix: str) -> SnnconvError:
    return SnnconvError(f"layer {name!r} ({what}) has no faithful spiking form: {fix}")


def _clamp_bounds(node: fx.Node) -> tuple[float, float | None] | None:
    """(min, max) if the node is a clamp/clip with constant bounds, else None."""
    is_clamp = (node.op == "call_function" and node.target in (torch.clamp, torch.clip)) or (
        node.op == "call_method" and node.target in ("clamp", "clip")
    )
    if not is_clamp:
        return None
    low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
    high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    return low, high


def _site_for(node: fx.Node, modules: dict[str, nn.Module]) -> ActivationSite | None:
    module = modules.get(node.target) if node.op == "call_module" else None
    if isinstance(module, QuantizedClip):
        return ActivationSite(module, "quantized", module.levels, module.shift, module.threshold.detach().clone())
    if isinstance(module, nn.ReLU6) or (node.op == "call_function" and node.target is F.relu6):
        return ActivationSite(None, "clip", None, 0.0, 6.0, upper=6.0)
    if isinstance(module, nn.Hardtanh) and module.min_val == 0:
        return ActivationSite(None, "clip", None, 0.0, float(module.max_val), upper=float(module.max_val))
    if is_relu_node(node, modules):
        return ActivationSite(None, "relu", None, 0.0, None)
    bounds = _clamp_bounds(node)
    if bounds is not None:
        low, high = bounds
        if low != 0 or not (high is None or isinstance(high, (int, float))):
            raise _unsupported(f"clamp({low}, {high})", node.name, "only clamp(x, 0, max) is an activation; use min=0")
        if high is None:
            return ActivationSite(None, "relu", None, 0.0, None)
        return ActivationSite(None, "clip", None, 0.0, float(high), upper=float(high))
    return None


def _check_supported(node: fx.Node, modules: dict[str, nn.Module]) -> None:
    if node.op in ("placeholder", "output", "get_attr"):
        return
    if node.op == "call_module":
        module = modules[node.target]
        kind = type(module)
        if isinstance(module, nn.Upsample) and module.mode != "nearest":
            raise _unsupported(f"Upsample mode={module.mode}", node.target, "use mode='nearest'")
        if isinstance(module, SUPPORTED_MODULES):
            return
        fix = _FIXES.get(kind, "use conv/linear/average-pool layers with ReLU, QCFS or ClipFloor activations")
        raise _unsupported(kind.__name__, node.target, fix)
    if node.op == "call_function":
        if node.target is F.interpolate and node.kwargs.get("mode", "nearest") != "nearest":
            raise _unsupported("interpolate", node.name, "use mode='nearest'")
        if node.target in SUPPORTED_FUNCTIONS:
            return
        if node.target in (operator.mul, operator.truediv, torch.mul) and any(isinstance(a, (int, float)) for a in node.args):
            return  # scaling by a constant is linear
        name = getattr(node.target, "__name__", str(node.target))
        raise _unsupported(f"function {name}", node.name, "express it with supported layers (conv, linear, avg-pool, add, cat)")
    if node.op == "call_method" and node.target not in SUPPORTED_METHODS:
        raise _unsupported(f"method .{node.target}()", node.name, "express it with supported layers (conv, linear, avg-pool, add, cat)")


def mark_activation_sites(graph_module: fx.GraphModule) -> fx.GraphModule:
    """Replace every activation node by an :class:`ActivationSite` module, in place.

    Raises :class:`SnnconvError` for any node the SNN cannot represent (max pooling,
    GELU, LSTM, a multiplication of two tensors, ...) and for a model with no activation.
    """
    modules = dict(graph_module.named_modules())
    sites = 0
    for node in list(graph_module.graph.nodes):
        site = _site_for(node, modules)
        if site is None:
            _check_supported(node, modules)
            continue
        name = f"site_{sites}"
        sites += 1
        graph_module.add_submodule(name, site)
        with graph_module.graph.inserting_after(node):
            new = graph_module.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        graph_module.graph.erase_node(node)
    if sites == 0:
        raise SnnconvError("the model has no activation to convert: add ReLU, QCFS or ClipFloor activations")
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


def activation_sites(graph_module: nn.Module) -> list[tuple[str, ActivationSite]]:
    """The activation sites of a marked graph, in execution order."""
    return [(name, m) for name, m in graph_module.named_modules() if isinstance(m, ActivationSite)]

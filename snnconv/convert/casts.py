"""Pass: a dtype cast of an input-dependent value to the dtype the network computes in is
the identity (``h.float()`` in a float32 model, ``h.to(x.dtype)``, ``h.type_as(self.w)``),
and is removed; a cast to another dtype is refused.

The network computes in one dtype: :func:`snnconv.convert` casts every parameter and
buffer to the dtype of the model's first parameter, and the engine casts the input to
it, so every input-dependent tensor has that dtype. A cast to it returns its input
unchanged (torch returns the tensor itself), at every step and on average; removing the
node keeps that true when the network is later moved to another dtype (``snn.half()``).
A cast to another dtype would change the precision mid-network (a half backbone with a
float32 head); it is refused, naming the fix.
"""
from __future__ import annotations

import torch
from torch import fx

from ..errors import SnnconvError
from .activation_sites import input_dependent

_CAST_METHODS = {"float": torch.float32, "double": torch.float64, "half": torch.float16, "bfloat16": torch.bfloat16}
_TENSOR_CASTS = ("to", "type", "type_as")
_HARMLESS_KWARGS = {"non_blocking", "copy", "memory_format"}


def _dtype_of_tensor(node, graph_module: fx.GraphModule, dtype: torch.dtype, dynamic: set) -> torch.dtype | None:
    """The dtype ``node`` has in the converted network, when it is known."""
    if not isinstance(node, fx.Node):
        return None
    if node in dynamic:
        return dtype  # every input-dependent tensor that converts has the network's dtype
    if node.op == "get_attr":
        try:
            value = _attr(graph_module, str(node.target))
        except AttributeError:
            return None
        if isinstance(value, torch.Tensor):
            return dtype if value.is_floating_point() else value.dtype  # parameters and buffers are cast with the network
    return None


def _attr(graph_module: fx.GraphModule, target: str):
    value = graph_module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _target_dtype(node: fx.Node, graph_module: fx.GraphModule, dtype: torch.dtype, dynamic: set) -> torch.dtype | None:
    """The dtype a cast node casts to, or None when it is not a pure dtype cast (a device
    move, a string type name) or the dtype is not known at conversion."""
    name = node.target
    if name in _CAST_METHODS:
        return _CAST_METHODS[name] if len(node.args) == 1 and set(node.kwargs) <= _HARMLESS_KWARGS else None
    rest, kwargs = list(node.args[1:]), dict(node.kwargs)
    if not set(kwargs) - {"dtype", "other", "tensor"} <= _HARMLESS_KWARGS:
        return None
    if name == "type_as":
        other = rest[0] if rest else kwargs.get("other")
        return _dtype_of_tensor(other, graph_module, dtype, dynamic)
    given = rest + [kwargs[k] for k in ("dtype", "other", "tensor") if k in kwargs]
    if len(given) != 1:
        return None  # .to(device, dtype), .to() or a memory-format-only call: left to the table
    (arg,) = given
    if isinstance(arg, torch.dtype):
        return arg
    if name == "to" and isinstance(arg, fx.Node):
        if arg.op == "call_function" and arg.target is getattr and len(arg.args) > 1 and arg.args[1] == "dtype":
            return _dtype_of_tensor(arg.args[0], graph_module, dtype, dynamic)  # h.to(x.dtype)
        return _dtype_of_tensor(arg, graph_module, dtype, dynamic)  # h.to(other_tensor)
    return None


def drop_no_op_casts(graph_module: fx.GraphModule, dtype: torch.dtype | None = None) -> fx.GraphModule:
    """Remove, in place, every cast of an input-dependent value to the network's dtype.

    Args:
        graph_module: a traced model.
        dtype: the dtype the network computes in; by default the dtype of its first
            parameter (float32 without parameters), which :func:`snnconv.convert` uses.

    Raises:
        SnnconvError: a cast of an input-dependent value to another dtype (named, with the fix).
    """
    if dtype is None:
        dtype = next((p.dtype for p in graph_module.parameters()), torch.float32)
    graph = graph_module.graph
    dynamic = input_dependent(graph)
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_method" or node.target not in (*_CAST_METHODS, *_TENSOR_CASTS) or node not in dynamic:
            continue
        if not node.args or not isinstance(node.args[0], fx.Node) or node.args[0] not in dynamic:
            continue  # the cast of a constant (self.w.to(x.dtype)) is a constant
        target = _target_dtype(node, graph_module, dtype, dynamic)
        if target is None:
            continue  # not a pure dtype cast: the table refuses it with the generic message
        if target != dtype:
            raise SnnconvError(
                f"layer {node.name!r} (.{node.target}() to {target}) casts a value of a {dtype} network to another "
                f"dtype, which changes its precision mid-network: convert the model in one dtype "
                f"(model.to({target}) or model.to({dtype}) before convert) and drop the cast")
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
        changed = True
    if changed:
        graph_module.recompile()
    return graph_module

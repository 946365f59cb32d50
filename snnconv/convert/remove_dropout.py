"""Pass: drop dropout of every spelling (identity in eval mode, meaningless in an SNN),
and ``nn.Identity`` placeholders (so BN folding and SNN Calibration see through them).

A model traced in train mode bakes ``F.dropout(x, p, self.training)`` into the graph as
``training=True``; this pass removes such nodes whatever their arguments, so the
converted network is deterministic whatever mode the source was in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from .activation_sites import free_name

DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
# Every functional spelling and the module that behaves the same and follows .train()/.eval().
DROPOUT_FUNCTIONS: dict = {
    F.dropout: nn.Dropout, F.dropout1d: nn.Dropout1d, F.dropout2d: nn.Dropout2d, F.dropout3d: nn.Dropout3d,
    F.alpha_dropout: nn.AlphaDropout, F.feature_alpha_dropout: nn.FeatureAlphaDropout,
    torch.dropout: nn.Dropout, torch.dropout_: nn.Dropout, torch.alpha_dropout: nn.AlphaDropout,
    torch.alpha_dropout_: nn.AlphaDropout, torch.feature_dropout: nn.Dropout2d, torch.feature_dropout_: nn.Dropout2d,
    torch.feature_alpha_dropout: nn.FeatureAlphaDropout, torch.feature_alpha_dropout_: nn.FeatureAlphaDropout,
}
_DROPOUT_METHODS = {"dropout", "dropout_"}


def is_dropout_node(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A node that applies dropout: a dropout module, function (``F.*``, ``torch.*``) or
    method; or an ``nn.Identity`` module (a placeholder, the identity like dropout in eval).

    Raises:
        Nothing.
    """
    if node.op == "call_module":
        return isinstance(modules.get(node.target), DROPOUT_MODULES) or type(modules.get(node.target)) is nn.Identity
    if node.op == "call_function":
        return node.target in DROPOUT_FUNCTIONS
    return node.op == "call_method" and node.target in _DROPOUT_METHODS


def dropout_probability(node: fx.Node) -> float:
    """p of a functional dropout node (its second argument or ``p=``; 0.5 by default).

    Raises:
        Nothing.
    """
    if len(node.args) > 1:
        return float(node.args[1])
    return float(node.kwargs.get("p", 0.5))


def remove_dropout(graph_module: fx.GraphModule) -> fx.GraphModule:
    """Rewire every dropout node (any spelling, any ``training`` flag) and every
    ``nn.Identity`` to its input, in place.

    Raises:
        Nothing.
    """
    modules = dict(graph_module.named_modules())
    for node in list(graph_module.graph.nodes):
        if is_dropout_node(node, modules):
            source = node.args[0] if node.args else node.kwargs["input"]
            node.replace_all_uses_with(source)
            graph_module.graph.erase_node(node)
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


def dropout_as_modules(graph_module: fx.GraphModule) -> fx.GraphModule:
    """Replace every functional dropout node by a dropout module, in place.

    A graph traced in train mode holds ``training=True`` as a constant, so its dropout
    would stay on after ``.eval()``; a module follows ``.train()`` / ``.eval()``.

    Raises:
        Nothing.
    """
    for index, node in enumerate(list(graph_module.graph.nodes)):
        if node.op != "call_function" or node.target not in DROPOUT_FUNCTIONS:
            continue
        name = free_name(graph_module, "dropout", index)
        graph_module.add_submodule(name, DROPOUT_FUNCTIONS[node.target](dropout_probability(node)))
        source = node.args[0] if node.args else node.kwargs["input"]
        with graph_module.graph.inserting_after(node):
            new = graph_module.graph.call_module(name, (source,))
        node.replace_all_uses_with(new)
        graph_module.graph.erase_node(node)
    graph_module.recompile()
    return graph_module

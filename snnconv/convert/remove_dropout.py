"""Pass: drop dropout layers (identity in eval mode, meaningless in an SNN)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import fx, nn

_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)


def remove_dropout(graph_module: fx.GraphModule) -> fx.GraphModule:
    """Rewire every dropout node to its input, in place; returns the same module."""
    modules = dict(graph_module.named_modules())
    for node in list(graph_module.graph.nodes):
        is_dropout = (node.op == "call_module" and isinstance(modules.get(node.target), _DROPOUT_MODULES)) or (
            node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS
        )
        if is_dropout:
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module

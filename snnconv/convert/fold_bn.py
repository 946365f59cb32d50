"""Pass: fold eval-mode BatchNorm into the conv or linear layer before it."""
from __future__ import annotations

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..errors import SnnconvError

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _parent_name(target: str) -> tuple[str, str]:
    parent, _, name = target.rpartition(".")
    return parent, name


def fold_batchnorm(graph_module: fx.GraphModule) -> fx.GraphModule:
    """Fold every ``conv/linear -> BatchNorm`` pair into one layer, in place.

    y = gamma * (W x + b - mu) / sqrt(var + eps) + beta  becomes  W' x + b'  with
    W' = W * gamma / sqrt(var + eps) and b' = (b - mu) * gamma / sqrt(var + eps) + beta.
    The folded shift lives in the bias, which is what wake-sleep conversion switches off
    during sleep. A BatchNorm that follows anything else is an error: it has no
    single layer to fold into.
    """
    modules = dict(graph_module.named_modules())
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BATCHNORMS):
            continue
        bn = modules[node.target]
        producer = node.args[0]
        layer = modules.get(producer.target) if isinstance(producer, fx.Node) and producer.op == "call_module" else None
        if not isinstance(layer, (*_CONVS, nn.Linear)) or len(producer.users) != 1:
            raise SnnconvError(
                f"BatchNorm {node.target!r} does not directly follow a conv/linear layer used only by it, so it "
                "cannot be folded: place each BatchNorm right after its conv or linear layer"
            )
        if not bn.track_running_stats or bn.running_mean is None:
            raise SnnconvError(f"BatchNorm {node.target!r} has no running statistics: build it with track_running_stats=True")
        fused = fuse_conv_bn_eval(layer.eval(), bn.eval()) if isinstance(layer, _CONVS) else fuse_linear_bn_eval(layer.eval(), bn.eval())
        parent, name = _parent_name(producer.target)
        setattr(graph_module.get_submodule(parent) if parent else graph_module, name, fused)
        modules[producer.target] = fused
        node.replace_all_uses_with(producer)
        graph_module.graph.erase_node(node)
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module

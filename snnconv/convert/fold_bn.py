"""Pass: fold eval-mode BatchNorm into the conv or linear layer before it."""
from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import SnnconvError

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)  # SyncBatchNorm: a BN in eval (DDP training)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ChannelAffine(nn.Module):
    """An eval-mode BatchNorm as a fixed per-channel affine map along dim 1.

    y = x * scale[c] + shift[c], scale = gamma / sqrt(var + eps), shift = beta - mu * scale.
    Applied at every step of an SNN, its mean over the steps is the ANN's BatchNorm of
    the mean input (it is affine); the shift is a constant drive, off in sleep steps.
    Shapes: ``[batch, C, *]`` in and out.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach()
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias.detach()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1, *([1] * (x.dim() - 2)))
        return torch.addcmul(self.shift.reshape(view), x, self.scale.reshape(view))


class FoldedLinearBN(nn.Linear):
    """A Linear followed by BatchNorm1d, folded for the ``[batch, features]`` layout.

    BatchNorm1d normalises dim 1. On a ``[batch, features]`` input that is the Linear's
    output features, so y = W' x + b' (the fold of :func:`fold_batchnorm`). On a
    ``[batch, N, features]`` input (tokens) dim 1 is N, not the features, and no fold
    is right: then y = BN(W x + b) with the original weights and the BN kept as its
    eval-mode per-channel affine map along dim 1. Which one applies is only known from
    the input, so the layer holds both. Shapes: ``[batch, in]`` or ``[batch, N, ..., in]``.
    """

    def __init__(self, linear: nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=True,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.affine = ChannelAffine(bn).to(bn.running_mean.dtype)  # gamma and beta optional (affine=False)
        scale, shift = self.affine.scale, self.affine.shift
        with torch.no_grad():  # W' = W * scale[:, None], b' = b * scale + shift
            self.weight.copy_(linear.weight * scale[:, None])
            self.bias.copy_(shift if linear.bias is None else linear.bias * scale + shift)
        self.register_buffer("unfolded_weight", linear.weight.detach().clone())
        self.register_buffer("unfolded_bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() <= 2:
            return super().forward(x)
        return self.affine(nn.functional.linear(x, self.unfolded_weight, self.unfolded_bias))


_CONV_FORWARDS = tuple(kind.forward for kind in _CONVS)


def _computes_its_weight(layer: nn.Module) -> bool:
    """A layer whose weight is computed when it runs (weight / spectral norm, as hooks or
    parametrizations; a conv class with its own forward, such as a QAT conv that
    fake-quantises its weight) or whose output a hook changes: folding a BN into its
    stored weight would be undone, stale or quantised otherwise, so the BN stays a
    per-channel affine after it."""
    own_forward = isinstance(layer, _CONVS) and type(layer).forward not in _CONV_FORWARDS
    return bool(own_forward or parametrize.is_parametrized(layer) or layer._forward_pre_hooks or layer._forward_hooks)


def _parent_name(target: str) -> tuple[str, str]:
    parent, _, name = target.rpartition(".")
    return parent, name


def fold_batchnorm(graph_module: fx.GraphModule) -> fx.GraphModule:
    """Fold every ``conv/linear -> BatchNorm`` pair into one layer, in place; any other
    eval-mode BatchNorm becomes a :class:`ChannelAffine` layer.

    y = gamma * (W x + b - mu) / sqrt(var + eps) + beta  becomes  W' x + b'  with
    W' = W * gamma / sqrt(var + eps) and b' = (b - mu) * gamma / sqrt(var + eps) + beta.
    A BatchNorm after anything else (average pooling, an activation, a residual
    addition, a conv whose output is also used elsewhere, a conv or linear layer called
    at several places of ``forward`` or whose weight or bias ``forward`` also reads
    (tied weights), whose shared weights cannot hold one BN's fold, a
    Linear whose out_features is not the BN's channel count, a layer under weight norm,
    spectral norm or another hook, a conv subclass with its own forward such as a QAT
    conv) is the per-channel affine map
    it is in eval mode, kept as a layer. A Linear -> BatchNorm1d pair becomes a
    :class:`FoldedLinearBN` (folded on ``[batch, features]``, as is on tokens). Folded or not, its shift is a constant drive,
    which wake-sleep conversion switches off during sleep.

    Raises:
        SnnconvError: a BatchNorm without running statistics (nothing to freeze).
    """
    modules = dict(graph_module.named_modules())
    calls: dict[str, int] = {}  # a layer called at several places (shared weights) is not folded into one BN
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
        elif node.op == "get_attr":  # its weight read in forward (tied weights, F.conv2d(h, self.conv.weight))
            owner = str(node.target).rpartition(".")[0]
            calls[owner] = calls.get(owner, 0) + 1
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BATCHNORMS):
            continue
        bn = modules[node.target]
        if not bn.track_running_stats or bn.running_mean is None:
            raise SnnconvError(f"BatchNorm {node.target!r} has no running statistics: build it with track_running_stats=True")
        producer = node.args[0]
        layer = modules.get(producer.target) if isinstance(producer, fx.Node) and producer.op == "call_module" else None
        foldable = (isinstance(layer, _CONVS) or (
            type(layer) is nn.Linear and isinstance(bn, nn.BatchNorm1d) and bn.num_features == layer.out_features)) and not (
            _computes_its_weight(layer))
        if not foldable or len(producer.users) != 1 or calls[producer.target] != 1:
            affine = ChannelAffine(bn).to(bn.running_mean.dtype)
            if calls[node.target] > 1 and any(n.op == "get_attr" and str(n.target).startswith(f"{node.target}.")
                                              for n in graph_module.graph.nodes):
                # forward() also reads the BN's weight or statistics: the BN stays, the call runs the affine
                from .activation_sites import free_name  # activation_sites imports ops, which imports this module

                node.target = free_name(graph_module, "batchnorm_affine")
                graph_module.add_submodule(node.target, affine)
            else:
                parent, name = _parent_name(node.target)
                setattr(graph_module.get_submodule(parent) if parent else graph_module, name, affine)
            modules[node.target] = affine
            continue
        fused = fuse_conv_bn_eval(layer.eval(), bn.eval()) if isinstance(layer, _CONVS) else FoldedLinearBN(layer, bn)
        parent, name = _parent_name(producer.target)
        setattr(graph_module.get_submodule(parent) if parent else graph_module, name, fused)
        modules[producer.target] = fused
        node.replace_all_uses_with(producer)
        graph_module.graph.erase_node(node)
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module

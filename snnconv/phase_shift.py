"""Move a quantised source from one shift φ to another without changing its function.

QCFS (φ = 1/2) and clip-floor (φ = 0) differ only in φ inside the floor:

    λ·clip(floor(z·L/λ + φ) / L, 0, 1)  =  λ·clip(floor((z + (φ - φ')·λ/L)·L/λ + φ') / L, 0, 1)

so a network with φ' computes exactly the function of one with φ when every activation's
input z is raised by Δ = (φ - φ')·λ/L: add Δ to the bias of the layer that feeds it (a
BatchNorm's β, or a conv/linear bias; through residual additions, to one branch). β is
added after the normalisation, so the move holds in training mode as well. Used by
``snnconv train --init-from`` between QCFS and clip-floor sources (CASC's clip-floor
source from a trained QCFS one: Li et al., Information Sciences 2024; Bu et al., ICLR 2022).
"""
from __future__ import annotations

import operator

import torch
from torch import fx, nn

from .activations import QuantizedClip

_BIAS_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_ADDS = (operator.add, torch.add)


class _LeafActivations(fx.Tracer):
    """Keeps each QCFS / clip-floor activation one node (their floor is not traced into)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, QuantizedClip) or super().is_leaf_module(module, qualified_name)


def _bias_carrier(node: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> str | None:
    """The layer whose bias moves ``node``'s value one for one: a BatchNorm (affine) or a
    conv/linear with a bias, called once and read only there; through additions, the
    first branch that has one. None when there is none."""
    if node.op == "call_module":
        module = modules.get(node.target)
        if isinstance(module, _BIAS_LAYERS) and getattr(module, "bias", None) is not None \
                and len(node.users) == 1 and calls[node.target] == 1:
            return node.target
        return None
    if node.op == "call_function" and node.target in _ADDS and "alpha" not in node.kwargs:
        for arg in node.args[:2]:
            if isinstance(arg, fx.Node) and len(arg.users) == 1:
                found = _bias_carrier(arg, modules, calls)
                if found is not None:
                    return found
    return None


def bias_carriers(model: nn.Module) -> dict[str, str | None]:
    """For each QCFS / clip-floor activation of ``model`` (by module path): the layer whose
    bias shifts its input one for one (:func:`_bias_carrier`), or None.

    Raises:
        torch.fx.proxy.TraceError (or another tracing error): ``model`` cannot be traced.
    """
    graph = _LeafActivations().trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    found: dict[str, str | None] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), QuantizedClip):
            single = calls[node.target] == 1 and isinstance(node.args[0], fx.Node)
            found[node.target] = _bias_carrier(node.args[0], modules, calls) if single else None
    return found


def match_shift(model: nn.Module, source: nn.Module) -> bool:
    """Make ``model`` (its weights and λ copied from ``source``) compute ``source``'s
    function although its activations have another φ, by adding
    Δ = (φ_source - φ_model)·λ/L to the bias before each activation, in place.

    Done only when it is exact everywhere: both have the same activations (paths, L) and
    each of ``model``'s has its own bias carrier (:func:`bias_carriers`); else nothing
    changes. Returns whether the biases were moved (False also when no φ differs).

    Raises:
        Nothing: a model it cannot analyse (not traceable) is left as it is.
    """
    ours = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedClip)}
    theirs = {n: m for n, m in source.named_modules() if isinstance(m, QuantizedClip)}
    if not ours or ours.keys() != theirs.keys() or any(ours[n].levels != theirs[n].levels for n in ours):
        return False
    if all(ours[n].shift == theirs[n].shift for n in ours):
        return False
    try:
        carriers = bias_carriers(model)
    except Exception:  # noqa: BLE001 - an untraceable model is simply not moved (fine-tuning learns the shift)
        return False
    if carriers.keys() != ours.keys() or any(c is None for c in carriers.values()) or len(set(carriers.values())) != len(carriers):
        return False
    with torch.no_grad():
        for name, activation in ours.items():
            delta = (theirs[name].shift - activation.shift) * activation.threshold.detach() / activation.levels
            bias = model.get_submodule(carriers[name]).bias
            bias.add_(delta.to(bias.dtype))
    return True

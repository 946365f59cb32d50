"""Symbolic tracing with an error a user can act on."""
from __future__ import annotations

import copy

from torch import fx, nn

from ..activations import QuantizedClip
from ..errors import SnnconvError


class _Tracer(fx.Tracer):
    """Keeps the source activations as single (leaf) nodes so passes can find them."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        # a subclass that rewrites forward() computes something else: traced into, so the
        # converter sees (and names) what it computes
        if isinstance(module, QuantizedClip) and type(module).forward is QuantizedClip.forward:
            return True
        return super().is_leaf_module(module, qualified_name)


def trace(model: nn.Module, copy_model: bool = True) -> fx.GraphModule:
    """Return ``model`` as an eval-mode ``GraphModule`` (a deep copy unless ``copy_model=False``).

    Raises:
        SnnconvError: ``model`` is not an ``nn.Module``, or torch.fx cannot trace it
            (data-dependent control flow; the tracer's message and the fix are given).
    """
    if not isinstance(model, nn.Module):
        raise SnnconvError(f"convert() needs a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model) if copy_model else model
    # Trace in eval mode: forward() code that reads self.training (dropout, noise) then
    # takes its inference branch, which is what the SNN must compute.
    model.eval()
    if isinstance(model, fx.GraphModule):
        _check_one_input(model, type(model).__name__)
        return model
    try:
        graph = _Tracer().trace(model)
        traced = fx.GraphModule(model, graph, type(model).__name__).eval()
    except Exception as err:  # fx raises many types; the message is what matters
        raise SnnconvError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); "
            "data-dependent control flow is not convertible: move it out of forward() or wrap it in a leaf module"
        ) from err
    _check_one_input(traced, type(model).__name__)
    return traced


def _check_one_input(graph_module: fx.GraphModule, name: str) -> None:
    """simulate() drives one input tensor: refuse a forward() that needs more.

    Raises:
        SnnconvError: forward() has several inputs without a default value.
    """
    required = [str(n.target) for n in graph_module.graph.nodes if n.op == "placeholder" and not n.args]
    if len(required) > 1:
        raise SnnconvError(
            f"{name}.forward takes {len(required)} inputs ({', '.join(required)}), but a spiking network is driven by "
            "one input tensor: wrap the model in a module whose forward(x) takes one tensor (e.g. the inputs "
            "concatenated along dim 1 and split inside), or give the other inputs default values")

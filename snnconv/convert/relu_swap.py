"""swap_relu: a copy of a ReLU model with every ReLU call site replaced by a QCFS or
clip-floor activation (the source ANN for QCFS training), traced like :func:`snnconv.convert`."""
from __future__ import annotations

from torch import fx, nn

from ..activations import is_relu_node, make_activation
from .activation_sites import _apply_in_place, _in_place, free_name
from .remove_dropout import dropout_as_modules
from .trace import _Tracer, _input_first, _out_of_place_updates, copy_of


def swap_relu(model: nn.Module, kind: str, levels: int = 4, threshold: float | None = None) -> nn.Module:
    """Return a copy of ``model`` with every ReLU (module, function or method) replaced.

    Every call site gets its own activation (its own trainable lambda): a ReLU module
    that ``forward`` calls at several places becomes one activation per place. The input
    model is not modified. The result is a copy of the same class when every ReLU is a
    module called once; otherwise a ``torch.fx.GraphModule`` in which functional dropout
    has become dropout modules, so that ``.eval()`` switches it off (a traced
    ``F.dropout(x, p, self.training)`` would keep the flag it was traced with). A model
    torch.fx cannot trace has its ReLU modules swapped in place (its call sites cannot
    be seen; such a model cannot be converted either).

    An in-place ReLU (``F.relu(y, inplace=True)``, ``y.relu_()``) whose input ``forward``
    reads again is followed there too: the later reads read the new activation, as they
    read the ReLU in the original; ``x += y`` stays the in-place update it is.

    Raises:
        SnnconvError: ``kind`` is unknown or ``levels`` / ``threshold`` are invalid (from
            :func:`make_activation`); a value updated in place (``x += y``, an in-place
            ReLU) read afterwards through another name or an older view (as in
            :func:`snnconv.convert`). A model torch.fx cannot trace is not an error here.
    """
    model = copy_of(model)
    try:  # convert()'s tracer: x += y and keyword inputs recorded as they run
        graph_module = fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
    except Exception:
        graph_module = None
    if graph_module is not None:
        _input_first(graph_module)
        # refuses a stale read of x after x += y; keeps updates of buffers (running statistics) in place
        _out_of_place_updates(graph_module, type(model).__name__, keep_state=True)
    if graph_module is None:
        _swap_relu_modules(model, kind, levels, threshold)
        return model
    modules = dict(graph_module.named_modules())
    calls: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU):
            calls[node.target] = calls.get(node.target, 0) + 1
    functional = any(n.op in ("call_function", "call_method") and is_relu_node(n, {}) for n in graph_module.graph.nodes)
    if not functional and all(count == 1 for count in calls.values()):
        _swap_relu_modules(model, kind, levels, threshold)
        return model
    for index, node in enumerate(list(graph_module.graph.nodes)):
        if not is_relu_node(node, modules):
            continue
        name = free_name(graph_module, "activation", index)
        graph_module.add_submodule(name, make_activation(kind, levels, threshold))
        with graph_module.graph.inserting_after(node):
            new = graph_module.graph.call_module(name, (node.args[0],))
        if _in_place(node, modules) and isinstance(node.args[0], fx.Node):  # later reads of its input see the activation
            _apply_in_place(graph_module.graph, node, new, modules)
        node.replace_all_uses_with(new)
        graph_module.graph.erase_node(node)
    dropout_as_modules(graph_module)
    # no dead-code elimination: it would drop in-place updates made for their effect
    # (z.clamp_(0, m), z[:, 0] = 0), which the original computes
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module.train(model.training)


def _swap_relu_modules(module: nn.Module, kind: str, levels: int, threshold: float | None) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, make_activation(kind, levels, threshold))
        else:
            _swap_relu_modules(child, kind, levels, threshold)

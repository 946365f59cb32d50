"""Symbolic tracing with an error a user can act on."""
from __future__ import annotations

import contextlib
import copy
import inspect
import operator
import re
from unittest import mock

import torch
from torch import fx, nn
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from ..activations import QuantizedClip
from ..errors import SnnconvError


_IN_PLACE_OPS = {"__iadd__": operator.iadd, "__isub__": operator.isub, "__imul__": operator.imul,
                  "__itruediv__": operator.itruediv}


class _Proxy(fx.Proxy):
    """A proxy that records ``x += y`` (and ``-=``, ``*=``, ``/=``) as the in-place op it is;
    plain fx records ``x + y``, which differs when another name still holds ``x``."""

    def __getattr__(self, k: str) -> "_Attribute":
        return _Attribute(self, k)


class _Attribute(fx.proxy.Attribute):
    """An attribute read (``h.data``, ``t.mT``): fx hands it out as its own proxy class, on
    which ``d = h.data; d *= 0.5`` would again be recorded as ``d * 0.5``, dropping the update
    of h's memory; this one records the in-place op too."""

    def __getattr__(self, k: str) -> "_Attribute":
        return _Attribute(self, k)


for _dunder, _op in _IN_PLACE_OPS.items():
    for _kind in (_Proxy, _Attribute):
        setattr(_kind, _dunder, lambda self, other, _op=_op: self.tracer.create_proxy("call_function", _op, (self, other), {}))


class _Tracer(fx.Tracer):
    """Keeps the source activations as single (leaf) nodes so passes can find them."""

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        # a subclass that rewrites forward() computes something else: traced into, so the
        # converter sees (and names) what it computes; so is a module whose forward was
        # replaced on the instance (module.forward = ...), whatever its class
        if "forward" in vars(module):
            return False
        if isinstance(module, QuantizedClip) and type(module).forward is QuantizedClip.forward:
            return True
        return super().is_leaf_module(module, qualified_name)

    def call_module(self, module: nn.Module, forward, args, kwargs):
        """A module built inside forward() (``nn.AdaptiveAvgPool2d(1)(h)``, ``nn.ReLU()(h)``)
        is not one of the model's: one without weights is traced into, as its functional
        form; one with weights gets fresh ones at every call, which nothing can convert."""
        try:
            self.path_of_module(module)
        except NameError:
            named = [name for name, _ in [*module.named_parameters(), *module.named_buffers()]]
            if named:
                raise SnnconvError(
                    f"forward() builds a {type(module).__name__} at every call (with {named[0]!r} new each time), which is "
                    "not a submodule of the model: create it once in __init__ (self.layer = ...) and call that") from None
            return forward(*args, **kwargs)
        return super().call_module(module, forward, args, kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``nn.DataParallel``, ``DistributedDataParallel`` and ``torch.compile``
    wrappers (which compute what it computes, and which torch.fx cannot trace)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif type(model).__module__.startswith("torch._dynamo") and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _unwrap_children(model: nn.Module) -> None:
    """Replace each wrapped submodule (``self.block = torch.compile(block)``, a DataParallel
    child) by the module inside, which computes the same and which torch.fx can trace."""
    for _, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            inner = unwrap(child)
            if inner is not child:
                setattr(module, name, inner)


def trace(model: nn.Module, copy_model: bool = True) -> fx.GraphModule:
    """Return ``model`` as an eval-mode ``GraphModule`` (a deep copy unless ``copy_model=False``);
    a ``DataParallel`` / ``DistributedDataParallel`` / ``torch.compile`` wrapper is unwrapped first.

    Raises:
        SnnconvError: ``model`` is not an ``nn.Module``, has weights on the meta device or
            uninitialized ones, a global module hook is installed (:func:`check_global_hooks`),
            forward() enters ``torch.autocast``, or torch.fx cannot trace it (data-dependent control flow; the tracer's message
            and the fix are given); forward() changes the model's state as it runs (:func:`_trace_stable`)
            or updates a parameter or buffer in place (:func:`_out_of_place_updates`); the model cannot be
            copied (:func:`copy_of`).
    """
    if not isinstance(model, nn.Module):
        raise SnnconvError(f"convert() needs a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    refuse_meta(model)
    check_global_hooks("convert")
    model = copy_of(model) if copy_model else model
    _unwrap_children(model)
    # Trace in eval mode: forward() code that reads self.training (dropout, noise) then
    # takes its inference branch, which is what the SNN must compute.
    model.eval()
    if isinstance(model, fx.GraphModule):  # traced already (torch.fx.symbolic_trace): the same checks and rewrites
        traced = model
    else:
        try:
            graph = _trace_stable(model, _default_arguments(model))
            _drop_specialisation_checks(graph)
            traced = fx.GraphModule(model, graph, type(model).__name__).eval()
        except SnnconvError:
            raise
        except Exception as err:  # fx raises many types; the message is what matters
            raise SnnconvError(
                f"cannot trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); "
                "data-dependent control flow is not convertible: move it out of forward() or wrap it in a leaf module"
            ) from err
    _check_one_input(traced, type(model).__name__)
    _check_hooks(model, traced)
    _namedtuple_outputs(traced)
    _input_first(traced)
    _refuse_out_arguments(traced, type(model).__name__)
    _out_of_place_updates(traced, type(model).__name__)
    return traced


_CONSTANT = re.compile(r"_tensor_constant\d+")
_SIMPLE = (type(None), bool, int, float, str)


def _trace_once(model: nn.Module, defaults: dict) -> fx.Graph:
    with _refuse_autocast(type(model).__name__):
        return _Tracer().trace(model, concrete_args=defaults or None)


def _fingerprint(model: nn.Module, graph: fx.Graph) -> tuple[str, list]:
    """The graph's code (tensor constants by one name) and those constants' values."""
    constants = [getattr(model, str(n.target)) for n in graph.nodes if n.op == "get_attr" and _CONSTANT.fullmatch(str(n.target))]
    return _CONSTANT.sub("_tensor_constant", graph.python_code("self").src), constants


def _equal(a, b) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return type(a) is type(b) and a == b
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():  # NaN equals NaN here
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    return torch.equal(a, b)


def _same(first: tuple[str, list], second: tuple[str, list]) -> bool:
    return first[0] == second[0] and len(first[1]) == len(second[1]) and all(map(_equal, first[1], second[1]))


def _state(model: nn.Module) -> tuple[dict, dict]:
    """The model's buffers (copied) and its modules' public Python attributes: numbers,
    strings and None by value, anything else (a cached tensor) by identity."""
    buffers = {name: (b, b.detach().clone()) for name, b in model.named_buffers()}
    attributes = {(path, key): value if type(value) in _SIMPLE else _Identity(value)
                  for path, module in model.named_modules() for key, value in vars(module).items() if not key.startswith("_")}
    return buffers, attributes


class _Identity:
    """An attribute value compared by identity (``self.prev = h`` rebinds it at every call)."""

    def __init__(self, value) -> None:
        self.value = value

    def __eq__(self, other) -> bool:
        return isinstance(other, _Identity) and other.value is self.value

    def __repr__(self) -> str:
        return "a new value"


def _trace_stable(model: nn.Module, defaults: dict) -> fx.Graph:
    """Trace ``model``, then again until two traces agree (a forward() that builds something
    on its first call, ``if self.grid is None: self.grid = ...``, settles after one).

    Tracing runs forward()'s Python: one that changes the model's state as it goes (a
    buffer it then reads, ``self.gain.mul_(0.5)``; a counter it branches on or computes
    with, ``self.calls += 1``) computes another function at every call, which a traced
    graph would freeze at one of them.

    Raises:
        SnnconvError: a trace changed a buffer the graph reads, or two traces in a row
            differ (the changed buffer or attribute is named).
    """
    graph = _trace_once(model, defaults)
    for _ in range(2):
        buffers, attributes = _state(model)
        again = _trace_once(model, defaults)
        changed = [name for name, (tensor, value) in buffers.items()
                   if dict(model.named_buffers()).get(name) is not tensor or not _equal(tensor, value)]
        read = {str(n.target) for n in again.nodes if n.op in ("get_attr", "call_module")}
        read_changed = [name for name in changed if name in read or name.rpartition(".")[0] in read]
        if not read_changed and _same(_fingerprint(model, graph), _fingerprint(model, again)):
            return again
        graph = again
    now = _state(model)[1]
    moved = [f"self.{path + '.' if path else ''}{key} ({value!r} -> {now[(path, key)]!r})" if type(value) in _SIMPLE
             else f"self.{path + '.' if path else ''}{key} ({now[(path, key)]!r} at every call)"
             for (path, key), value in attributes.items() if (path, key) in now and now[(path, key)] != value]
    what = f"buffer {(read_changed or changed)[0]!r}" if read_changed or changed else moved[0] if moved else "its own state"
    raise SnnconvError(
        f"{type(model).__name__}.forward() changes {what} as it runs, so the ANN computes another function at every call "
        "and no spiking network reproduces it: keep forward() a function of its input (update such state under "
        "`if self.training:` or outside forward())")


@contextlib.contextmanager
def _refuse_autocast(name: str):
    """While tracing: refuse ``torch.autocast`` (any device's, as ``with`` or decorator)
    entered inside forward(). torch.fx records no node for it, so the SNN would compute in
    the model's dtype where the ANN computed in the autocast dtype (GN at T = 1 then misses
    the ANN it equals), and a ``.float()`` after it would be dropped as a no-op cast."""
    enter = torch.amp.autocast_mode.autocast.__enter__

    def refuse(self):
        if not getattr(self, "_enabled", True):  # autocast(enabled=False): the model's own dtype, as the SNN computes
            return enter(self)
        raise SnnconvError(
            f"{name}.forward() enters torch.autocast({self.device!r}, dtype={self.fast_dtype}), which tracing drops: "
            "the SNN would compute in the model's dtype, not the ANN's: remove the autocast from forward() and cast "
            f"the model instead (model.to({self.fast_dtype}))")

    with mock.patch.object(torch.amp.autocast_mode.autocast, "__enter__", refuse):
        yield


_CONSTANT_DEFAULTS = (type(None), bool, int, float, str)


def _default_arguments(model: nn.Module) -> dict:
    """forward()'s arguments after the input that have a number, string, bool or None
    default: the values they always take, since a spiking network is driven by the input
    alone. Traced with them, ``if mask is not None:`` or ``if return_features:`` follow
    the branch the ANN takes when called with the input only."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in parameters[1:]
            if p.kind in kinds and p.default is not inspect.Parameter.empty and type(p.default) in _CONSTANT_DEFAULTS}


def _drop_specialisation_checks(graph: fx.Graph) -> None:
    """Remove the checks fx adds for arguments traced as constants (``assert mask is None``),
    which only compare a default with itself."""
    from torch.fx._symbolic_trace import _assert_is_none

    def specialised(value: fx.Node) -> bool:  # a placeholder traced as its default, or default == value
        if value.op == "call_function" and value.target is operator.eq:
            return any(specialised(i) for i in value.all_input_nodes)
        return value.op == "placeholder" and bool(value.args)

    for node in reversed(list(graph.nodes)):
        if node.op == "call_function" and node.target in (torch._assert, _assert_is_none) and not node.users \
                and node.all_input_nodes and all(specialised(i) for i in node.all_input_nodes):
            inputs = node.all_input_nodes
            graph.erase_node(node)
            for value in inputs:
                if value.op == "call_function" and value.target is operator.eq and not value.users:
                    graph.erase_node(value)


def check_global_hooks(when: str) -> None:
    """Refuse module hooks installed for every module (``register_module_forward_hook`` /
    ``register_module_forward_pre_hook``): torch runs them on each layer the spiking
    network calls, on windows of time steps, where the ANN ran them once per input; a hook
    that changes a layer's output (a clamp) would then compute something else, silently.

    Raises:
        SnnconvError: such a hook is installed (named, with the fix).
    """
    from torch.nn.modules import module as torch_module

    for kind, hooks in (("forward", torch_module._global_forward_hooks),
                        ("forward pre", torch_module._global_forward_pre_hooks)):
        for hook in hooks.values():
            register = "register_module_forward_hook" if kind == "forward" else "register_module_forward_pre_hook"
            raise SnnconvError(
                f"a global {kind} hook ({getattr(hook, '__name__', type(hook).__name__)}, installed with "
                f"torch.nn.modules.module.{register}) runs on every layer, and in a spiking network on windows of time "
                f"steps, not as in the ANN: remove it (handle.remove()) before {when}")


def copy_of(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, which conversion works on (the model is never changed).

    Raises:
        SnnconvError: the model holds something ``copy.deepcopy`` cannot copy (a lock, an
            open file, a data loader), named by torch's message.
    """
    try:
        return copy.deepcopy(model)
    except Exception as err:  # deepcopy raises TypeError, RuntimeError, pickling errors, ...
        raise SnnconvError(
            f"{type(model).__name__}: conversion works on a copy of the model, and copy.deepcopy failed "
            f"({type(err).__name__}: {err}): remove what cannot be copied (a lock, an open file, a data loader, a "
            "logger) from the model's attributes before convert") from err


def refuse_meta(model: nn.Module) -> None:
    """A model built on the ``meta`` device has shapes but no values to convert; a lazy
    module that never ran has neither.

    Raises:
        SnnconvError: a parameter or buffer is on the meta device or uninitialized (the
            first one is named).
    """
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
            raise SnnconvError(
                f"{type(model).__name__}: {name!r} is uninitialized (a lazy module, e.g. nn.LazyLinear, that has not "
                "run yet), so there are no weights to convert: run the trained model once on a batch (model(x)) or "
                "load its weights before convert")
        if tensor.is_meta:
            raise SnnconvError(
                f"{type(model).__name__}: {name!r} is on the meta device (shapes, no values), so there are no weights to "
                "convert: load the trained weights first (model.to_empty(device='cpu') then load_state_dict(state), or "
                "load_state_dict(state, assign=True))")


# Pre-hooks that recompute a layer's weight from its parameters (weight * mask, g * v / |v|),
# not its values: they run whenever the kept layer runs, which is what the ANN does.
_WEIGHT_HOOKS = (WeightNorm, SpectralNorm, BasePruningMethod)


def _check_hooks(model: nn.Module, traced: fx.GraphModule) -> None:
    """Refuse a forward (pre-)hook that torch.fx would drop or misapply.

    fx traces ``model.forward`` itself (the model's own hooks never run) and records
    each leaf module as one call: a hook on an activation, a BatchNorm or a dropout
    vanishes when the passes replace, fold or remove that call, and a hook on a kept
    layer (conv, pooling) would run on whole windows of time steps, right only when
    it is affine. Hooks on the user's own (non-leaf) modules are traced with them and
    converted like the rest of forward(); weight / spectral norm and pruning pre-hooks
    recompute weights and are kept.

    Raises:
        SnnconvError: the model or a module the graph calls has such a hook (named, with the fix).
    """
    called = [(str(n.target), traced.get_submodule(str(n.target))) for n in traced.graph.nodes if n.op == "call_module"]
    for path, module in [("", model), *called]:
        for kind, hooks in (("forward", module._forward_hooks), ("forward pre", module._forward_pre_hooks)):
            for hook in hooks.values():
                if kind == "forward pre" and isinstance(hook, _WEIGHT_HOOKS):
                    continue
                where = repr(path) if path else "the model"
                raise SnnconvError(
                    f"{where} ({type(module).__name__}) has a {kind} hook ({getattr(hook, '__name__', type(hook).__name__)}), "
                    "which torch.fx does not trace: the spiking network would compute without it (or run it on whole "
                    "windows of time steps): remove it (handle.remove()) before convert, or write what it computes "
                    "into forward()")


def _is_namedtuple_class(target) -> bool:
    return isinstance(target, type) and issubclass(target, tuple) and hasattr(target, "_fields")


def _namedtuple_outputs(graph_module: fx.GraphModule) -> None:
    """``return Out(logits, features)`` (a namedtuple): fx records the constructor as a call;
    the output becomes the namedtuple of its fields' nodes, so ``simulate()`` returns the
    same namedtuple with ``[T, B, ...]`` per field (as it does for a tuple or dict). A
    namedtuple used inside forward() stays a call (refused by name)."""
    output = next(n for n in graph_module.graph.nodes if n.op == "output")
    built = [n for n in output.all_input_nodes
             if n.op == "call_function" and _is_namedtuple_class(n.target) and set(n.users) == {output}]
    if not built:
        return
    swap = {}
    for node in built:
        try:
            swap[node] = node.target(*node.args, **node.kwargs)
        except TypeError:  # wrong field count: the model's own error when it runs
            continue
    output.args = fx.node.map_arg(output.args, lambda n: swap.get(n, n))
    for node in swap:
        graph_module.graph.erase_node(node)
    graph_module.recompile()


def _input_first(graph_module: fx.GraphModule) -> None:
    """A layer called with its input by keyword (``self.bn(input=h)``, ``self.act(z=h)``,
    ``torch.clamp(input=h, min=0)``) gets it as the first positional argument, where the
    passes read a layer's input; the call computes the same."""
    modules = dict(graph_module.named_modules())
    for node in graph_module.graph.nodes:
        if node.args or not node.kwargs:
            continue
        if node.op == "call_function" and "input" in node.kwargs:
            kwargs = dict(node.kwargs)
            node.args, node.kwargs = (kwargs.pop("input"),), kwargs
        elif node.op == "call_module" and node.target in modules:
            try:
                bound = inspect.signature(modules[node.target].forward).bind(**node.kwargs)
            except (TypeError, ValueError):  # the module's own error when it runs
                continue
            node.args, node.kwargs = tuple(bound.args), dict(bound.kwargs)
    graph_module.recompile()


_OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                 operator.itruediv: operator.truediv}
# x.add_(y) is x += y (alpha= and rounding_mode= kept): the same update, the same rule
_METHODS_IN_PLACE = {"add_": torch.add, "sub_": torch.sub, "mul_": torch.mul, "div_": torch.div}


_SPELLING = {"iadd": "+=", "isub": "-=", "imul": "*=", "itruediv": "/=", "add_": "+=", "sub_": "-=", "mul_": "*=",
             "div_": "/="}


def _state_of(node: fx.Node, modules: dict) -> str | None:
    """The parameter or buffer (``"c2.weight"``) whose memory ``node`` shares: a ``get_attr``
    read, or a view of one (``w.data``, ``w.view(-1)``, ``w[0]``); None for any other value."""
    from .activation_sites import _is_view  # activation_sites imports ops, not trace

    while node.op != "get_attr":
        if not (_is_view(node, modules) and node.args and isinstance(node.args[0], fx.Node)):
            return None
        node = node.args[0]
    return str(node.target)


def _is_number(node: fx.Node) -> bool:
    """A size read (``x.shape[0]``, ``x.size(1)``): a Python number, which ``+=`` rebinds."""
    while node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return (node.op == "call_function" and node.target is getattr and node.args[1:2] in (("shape",), ("ndim",))) or (
        node.op == "call_method" and node.target in ("size", "dim", "numel"))  # not h.data: a tensor


def _out_of_place_updates(graph_module: fx.GraphModule, name: str, keep_state: bool = False) -> None:
    """``x += y`` overwrites x: in the ANN every later read of x, or of a view of x taken
    before, sees the sum. The update becomes ``x + y`` (which the graph then computes
    as the ANN does) unless such a later read exists, which is refused. ``x.add_(y)``
    (``sub_``, ``mul_``, ``div_``) is the same update, and later reads of x itself read it.
    ``keep_state``: an update of a parameter or buffer stays the in-place op it is (a graph
    run as a PyTorch model, :func:`snnconv.convert.relu_swap.swap_relu`), instead of refused.

    Raises:
        SnnconvError: a value updated in place (``+=``, ``-=``, ``*=``, ``/=``, ``x.add_(y)``, ...)
            is read again afterwards under another name, or is one of the model's parameters or
            buffers (``self.conv.weight.data.mul_(0.5)``), which the ANN changes at every call.
    """
    from .activation_sites import _aliases, _derived_from, user_path  # activation_sites imports ops, not trace

    graph = graph_module.graph
    modules = dict(graph_module.named_modules())
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        method = node.op == "call_method" and node.target in _METHODS_IN_PLACE
        if not method and (node.op != "call_function" or node.target not in _OUT_OF_PLACE):
            continue
        source = node.args[0]
        state = _state_of(source, modules) if isinstance(source, fx.Node) else None
        if state is not None and keep_state:
            continue
        if state is not None:  # out of place, the update would be lost: the SNN would run on the old weight
            key = node.target if method else node.target.__name__
            written = f"x.{key}(y)" if method else f"x {_SPELLING[key]} y"
            raise SnnconvError(
                f"{name}: {user_path(node)!r} ({written}) updates {state!r} (the model's own parameter or buffer) in place "
                "at every call, so the ANN computes another function each time it runs and the spiking network cannot "
                f"follow it: apply the update once to the model before convert (with torch.no_grad(): ...) and remove it "
                "from forward(), or compute a new tensor (w = w * y) without writing it back")
        if method and isinstance(source, fx.Node):  # x.add_(y) keeps the name x: its later reads see the update
            for user in list(source.users):
                if user is not node and order[user] > order[node]:
                    user.replace_input_with(source, node)
        if isinstance(source, fx.Node) and not _is_number(source):
            for alias in _aliases(source, modules) | {source}:
                if _derived_from(alias, (node,), modules):
                    continue
                later = [u for u in alias.users if u is not node and order[u] > order[node] and not _is_number(u)]
                if later:
                    key = node.target if method else node.target.__name__
                    spelling = _SPELLING[key]
                    written = f"x.{key}(y)" if method else f"x {spelling} y"
                    raise SnnconvError(
                        f"{name}: {user_path(node)!r} ({written}) overwrites {source.name!r} in place, which "
                        f"{later[0].name!r} then reads under another name: write x = x {spelling[0]} y (out of place) "
                        "or read the value before the update")
        if method:
            node.op, node.target = "call_function", _METHODS_IN_PLACE[node.target]
        else:
            node.target = _OUT_OF_PLACE[node.target]
    graph_module.recompile()


def _refuse_out_arguments(graph_module: fx.GraphModule, name: str) -> None:
    """``torch.clamp(z, 0, m, out=z)`` writes into z, which the passes cannot follow (an
    activation becomes a neuron with its own output; a window is not z's storage).

    Raises:
        SnnconvError: a call with an ``out=`` tensor.
    """
    from .activation_sites import user_path  # activation_sites imports ops, not trace

    for node in graph_module.graph.nodes:
        out = node.kwargs.get("out") if node.op in ("call_function", "call_method") else None
        if isinstance(out, fx.Node):
            raise SnnconvError(
                f"{name}: {user_path(node)!r} writes its result into {out.name!r} (out={out.name}), which the converter "
                f"cannot follow: assign the result instead ({out.name} = {getattr(node.target, '__name__', node.target)}(...))")


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

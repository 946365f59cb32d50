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
from .max_pool import MaxPoolGate
from .ops import OPS, lookup, squeeze_samples

_MAX_POOL_OPS = {f"{kind}{d}d" for kind in ("max_pool", "adaptive_max_pool") for d in (1, 2, 3)}


class ActivationSite(nn.Module):
    """One ANN activation, tagged with what its spiking replacement needs.

    Attributes:
        kind: ``"quantized"`` (QCFS / clip-floor), ``"relu"`` or ``"clip"`` (clamp(x, 0, m)).
        levels: L for quantised sources, else None.
        shift: phi of the source (1/2 for QCFS, 0 otherwise).
        threshold: theta = lambda, the clip value, or a calibrated value; None until known.
        upper: the clip value of ``"clip"`` (clamp(x, 0, upper)), else None.
        path: where the activation sits in the user's model: its module path
            (``"layer3.1.relu"``, ``"features.3"``), or the enclosing module's path and the
            function name for a functional call (``"layer1.0.relu"`` for ``F.relu`` in
            ``layer1.0``); a later call of the same name gets ``#2``, ``#3``, ...
            None for a site built by hand.
    """

    def __init__(self, original: nn.Module | None, kind: str, levels: int | None, shift: float, threshold: float | torch.Tensor | None, upper: float | None = None, path: str | None = None):
        super().__init__()
        self.path = path
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


def free_name(graph_module: nn.Module, prefix: str, start: int = 0) -> str:
    """``f"{prefix}_{start}"``, or the next ``f"{prefix}_{n}"`` the model does not use yet:
    a module a pass adds (``site_1``) must not replace the user's own ``self.site_1``,
    whose calls would then run it.

    Raises:
        Nothing.
    """
    index = start
    while hasattr(graph_module, f"{prefix}_{index}"):
        index += 1
    return f"{prefix}_{index}"


# What converts is the table of operations (snnconv.convert.ops): every op there except
# the activations (which become sites) and max pooling after a spiking layer (refused or
# gated) is affine in its windowed input, f(s) = A s + c. These views are kept for reading.
SUPPORTED_MODULES = tuple(m for op in OPS if op.kind != "activation" and op.name not in _MAX_POOL_OPS for m in op.modules)
SUPPORTED_FUNCTIONS = {f for op in OPS if op.kind != "activation" for f in op.functions}
SUPPORTED_METHODS = {m for op in OPS if op.kind != "activation" for m in op.methods}
_MAX_POOL_FIX = (
    "max pooling is exact only on the analog input, before the first activation: move it there, convert with "
    "max_pool='gate' (an approximate spiking max, Rueckauer et al. 2017), or replace it by average pooling "
    "(nn.AvgPool2d, same kernel) and retrain the source ANN"
)


def _max_pool_fix(max_pool: str | None) -> str:
    if max_pool == "gate":  # asked for, but this spelling has no gate
        return ("max_pool='gate' gates nn.MaxPool1d/2d/3d and F.max_pool1d/2d/3d without return_indices; write this "
                "pooling as one of those (an adaptive max pool as nn.MaxPool2d with its kernel), or use average pooling")
    return _MAX_POOL_FIX


def _unsupported(what: str, name: str, fix: str) -> SnnconvError:
    return SnnconvError(f"layer {name!r} ({what}) has no faithful spiking form: {fix}")


def _clamp_bounds(node: fx.Node) -> tuple[float, float | None] | None:
    """(min, max) if the node is a clamp/clip with constant bounds, else None."""
    if (node.op == "call_function" and node.target in (torch.clamp_min, torch.clamp_min_)) or (
            node.op == "call_method" and node.target in ("clamp_min", "clamp_min_")):
        return node.args[1] if len(node.args) > 1 else node.kwargs.get("min"), None  # clamp_min(x, 0): a ReLU
    is_clamp = (node.op == "call_function" and node.target in (torch.clamp, torch.clip, torch.clamp_, torch.clip_)) or (
        node.op == "call_method" and node.target in ("clamp", "clip", "clamp_", "clip_")
    )
    if not is_clamp:
        return None
    low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
    high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    return low, high


def _site_for(node: fx.Node, modules: dict[str, nn.Module]) -> ActivationSite | None:
    site = _site_of(node, modules)
    if site is not None and site.kind == "clip" and site.upper == float("inf"):  # clamp(x, 0, inf) is a ReLU
        return ActivationSite(None, "relu", None, 0.0, None)
    return site


def _site_of(node: fx.Node, modules: dict[str, nn.Module]) -> ActivationSite | None:
    module = modules.get(node.target) if node.op == "call_module" else None
    if isinstance(module, QuantizedClip):
        lam = module.threshold.detach().clone()
        if not bool(torch.isfinite(lam).all()) or bool((lam <= 0).any()):
            raise SnnconvError(
                f"activation {node.target!r} ({type(module).__name__}) has clip value lambda = {lam.flatten()[0].item():.4g}, "
                "but it must be > 0 (it is the spiking threshold): retrain with lambda kept positive (snnconv train "
                "does this; in your own loop call snnconv.activations.keep_thresholds_positive(model) after each "
                "optimizer.step()), or set it to a positive value"
            )
        return ActivationSite(module, "quantized", module.levels, module.shift, lam)
    if isinstance(module, nn.ReLU6) or (node.op == "call_function" and node.target is F.relu6):
        return ActivationSite(None, "clip", None, 0.0, 6.0, upper=6.0)
    if isinstance(module, nn.Hardtanh) and module.min_val == 0:
        return ActivationSite(None, "clip", None, 0.0, float(module.max_val), upper=float(module.max_val))
    if node.op == "call_function" and node.target in (F.hardtanh, F.hardtanh_):  # F.hardtanh(x, 0, m): nn.Hardtanh(0, m)
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        if low == 0 and isinstance(high, (int, float)) and not isinstance(high, bool) and high > 0:
            return ActivationSite(None, "clip", None, 0.0, float(high), upper=float(high))
        return None
    if is_relu_node(node, modules):
        return ActivationSite(None, "relu", None, 0.0, None)
    bounds = _clamp_bounds(node)
    if bounds is not None:
        low, high = bounds
        if low != 0 or not (high is None or isinstance(high, (int, float))):
            _refuse_inside_user_module(node, f"clamp({low}, {high})")  # a clip activation class: the activations= mapping
            raise _unsupported(f"clamp({low}, {high})", _where(node), "only clamp(x, 0, max) with numbers is an activation: "
                               "use min=0 and a number max (a trained clip value: QCFS / ClipFloor's lambda)")
        if high is None:
            return ActivationSite(None, "relu", None, 0.0, None)
        if not high > 0:
            raise _unsupported(f"clamp({low}, {high})", _where(node), "a clip at max <= 0 is zero everywhere: give it a "
                               "positive max, or drop the layer")
        return ActivationSite(None, "clip", None, 0.0, float(high), upper=float(high))
    return None


# casts too: a cast to the same dtype returns the tensor itself (x += 1 on it updates x)
_VIEW_METHODS = {"view", "view_as", "reshape", "flatten", "unflatten", "transpose", "permute", "squeeze", "unsqueeze",
                 "expand", "expand_as", "contiguous", "movedim", "moveaxis", "swapaxes", "swapdims", "chunk", "split",
                 "narrow", "select", "t", "unbind",
                 "relu_", "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as"}
_VIEW_FUNCTIONS = {torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze,
                   torch.movedim, torch.moveaxis, torch.swapaxes, torch.swapdims, torch.chunk, torch.split, torch.narrow,
                   torch.select, torch.t, torch.unbind,
                   operator.getitem, torch.relu_, F.relu_, torch.detach}

_VIEW_ATTRIBUTES = {"data", "T", "mT", "H", "mH", "real"}


def _is_view(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """May ``node``'s output share memory with its first input (a view, or an in-place op)?"""
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    if node.op == "call_function":
        if node.target is getattr:  # h.data, h.mT, ...: the same memory under another name
            return len(node.args) > 1 and node.args[1] in _VIEW_ATTRIBUTES
        return node.target in _VIEW_FUNCTIONS or bool(node.kwargs.get("inplace"))
    if node.op == "call_module":
        module = modules.get(node.target)
        return isinstance(module, (nn.Flatten, nn.Unflatten, nn.Identity)) or bool(getattr(module, "inplace", False))
    return False


def _in_place(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """An activation that overwrites its input: ``relu_``, ``inplace=True`` (module or function)."""
    if node.op == "call_module":
        return bool(getattr(modules.get(node.target), "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    if node.op == "call_function":
        return getattr(node.target, "__name__", "").endswith("_") or bool(
            node.kwargs.get("inplace", len(node.args) > 1 and node.args[1] is True))
    return False


def _aliases(source: fx.Node, modules: dict[str, nn.Module]) -> set[fx.Node]:
    """Every node whose value may share memory with ``source`` (views up and down)."""
    base = source
    while _is_view(base, modules) and isinstance(base.args[0] if base.args else None, fx.Node):
        base = base.args[0]
    found, todo = {base}, [base]
    while todo:
        for user in todo.pop().users:
            if user not in found and _is_view(user, modules) and user.args and user.args[0] in found:
                found.add(user)
                todo.append(user)
    return found


def _apply_in_place(graph: fx.Graph, node: fx.Node, site: fx.Node, modules: dict[str, nn.Module]) -> None:
    """An in-place activation overwrites its input: later readers of the input read the
    activation's output (as in the ANN); a later read through another view of the same
    memory taken before the activation (or a view of such a view) cannot be rewired and
    is refused. Views of the activation's own output read what the SNN computes."""
    source = node.args[0]
    order = {n: i for i, n in enumerate(graph.nodes)}
    aliases = _aliases(source, modules)
    for user in list(source.users):
        if user is not node and user is not site and order[user] > order[node]:
            user.replace_input_with(source, site)
    for alias in aliases:
        if alias is source or _derived_from(alias, (node, site), modules):
            continue
        for user in list(alias.users):
            if user is node or user is site or order[user] < order[node]:
                continue
            where = user_path(node)
            raise SnnconvError(
                f"activation {where!r} overwrites its input in place, which {user.name!r} then reads through "
                f"{alias.name!r} (a view of the same memory): use the out-of-place form (nn.ReLU(), F.relu(x), "
                "inplace=False)")


def _derived_from(alias: fx.Node, roots: tuple[fx.Node, ...], modules: dict[str, nn.Module]) -> bool:
    """Is ``alias`` one of ``roots`` or a chain of views of one of them?"""
    base = alias
    while True:
        if base in roots:
            return True
        if not (_is_view(base, modules) and base.args and isinstance(base.args[0], fx.Node)):
            return False
        base = base.args[0]


def _user_module(node: fx.Node) -> tuple[str, type] | None:
    """The innermost user-written (not torch.nn) module the node was traced inside, if any."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, kind in reversed(list(stack.values())):
        if isinstance(kind, type) and not kind.__module__.startswith("torch."):
            return path, kind
    return None


def user_path(node: fx.Node) -> str:
    """The user's name of the activation a node computes, before de-duplication.

    A module call: its qualified name (``"layer3.1.relu"``, ``"3"`` in a Sequential).
    A function or method call: the innermost module it was traced in, dot, the function
    name (``"layer1.0.relu"`` for ``F.relu(x)`` inside ``layer1.0``; ``"relu"`` at the top).
    """
    if node.op == "call_module":
        return str(node.target)
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", node.name)
    stack = node.meta.get("nn_module_stack") or {}
    owner = next(reversed(stack.values()))[0] if stack else ""
    return f"{owner}.{name}" if owner else str(name)


def _where(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _refuse_inside_user_module(node: fx.Node, what: str) -> None:
    """A node we cannot convert, traced inside a user's module: name that module and class.

    Usually it is a custom activation (a QCFS written with torch.floor, a clip built
    with torch.where), which the ``activations=`` mapping of :func:`convert` converts.
    """
    owner = _user_module(node)
    if owner is None:
        return
    path, kind = owner
    raise SnnconvError(
        f"module {path!r} ({kind.__name__}) computes {what}, which has no spiking form: if {kind.__name__} is an "
        f"activation, map it to a supported one, convert(model, neuron, activations={{{kind.__name__}: lambda m: "
        f"QCFS(levels=..., threshold=...)}}); otherwise express it with conv, linear, average-pool, add or cat"
    )


def _dim_list(value) -> list:
    if value is None:
        return [None]
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _touches_batch(node: fx.Node, rank: int | None = None) -> bool:
    """Does a reduction, concatenation, axis move or index act on dim 0 (the batch, which
    carries time)? With ``rank`` (the input's number of dims, known when the graph runs)
    negative dims are resolved too: ``sum(-2)`` of a ``[B, C]`` value is over dim 0."""
    op = lookup(node, {})  # by the table's op, so every spelling of it (torch.concatenate, .swapaxes) is read alike
    name = op.name if op is not None else node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    args = node.args[1:]
    kwargs = node.kwargs

    def at(d, extra: int = 0):  # a dim, negative ones resolved against the rank when known
        if rank is not None and isinstance(d, int) and not isinstance(d, bool) and d < 0:
            return d + rank + extra
        return d

    if name in ("mean", "sum"):
        dims = _dim_list(args[0] if args else kwargs.get("dim", kwargs.get("axis")))  # axis=: numpy's name
        return not dims or any(d is None or at(d) == 0 for d in dims)  # dim=() is every dim, as None
    if name in ("cat", "stack"):
        return at(node.args[1] if len(node.args) > 1 else kwargs.get("dim", kwargs.get("axis", 0)), int(name == "stack")) == 0
    if name in ("chunk", "split"):
        return at(node.args[2] if len(node.args) > 2 else kwargs.get("dim", 0)) == 0
    if name == "transpose":
        named = [kwargs.get(k) for k in ("dim0", "dim1", "axis0", "axis1")]  # swapaxes: axis0 / axis1
        return 0 in [at(a) for a in args[:2] if isinstance(a, int)] or 0 in [at(d) for d in named]
    if name == "permute":
        dims = list(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else list(args or kwargs.get("dims", ()))
        return bool(dims) and at(dims[0]) != 0
    if name == "flatten":
        return at(args[0] if args else kwargs.get("start_dim", 0)) == 0
    if name == "getitem":
        return _indexes_batch(node, rank)
    if name == "movedim":
        moved = (list(args[:2]) + [kwargs.get("source"), kwargs.get("destination")])
        return any(0 in [at(x) for x in _dims_of(d)] for d in moved if d is not None)
    if name in ("squeeze", "unsqueeze", "unflatten"):
        dim = args[0] if args else kwargs.get("dim")
        return dim is not None and 0 in [at(x, int(name == "unsqueeze")) for x in _dims_of(dim)]
    if name == "getattr":  # h.T; h.mT / h.mH swap the last two dims, which are dims 0 and 1 of a [B, C] value
        attribute = node.args[1] if len(node.args) > 1 else None
        return attribute in ("T", "H") or (attribute in ("mT", "mH") and rank == 2)
    return False


def _batch_op_name(node: fx.Node) -> str:
    """The op's name in a dim-0 error: the method or function, ``.mT`` for an attribute read."""
    if node.op == "call_function" and node.target is getattr and len(node.args) > 1:
        return f".{node.args[1]}"
    return node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))


def _batch_fix(window: bool) -> str:
    """Why an op over dim 0 is refused, and the fix: after a spiking layer dim 0 carries
    time; before one (the analog input) the op mixes the samples of a chunk."""
    if window:
        return "dim 0 is the batch (it carries time in the SNN): reduce, concatenate or move only dims >= 1"
    return ("dim 0 is the batch: an op over it mixes the samples, which simulate() and calibration run in chunks, so "
            "a sample's output would depend on the others in its chunk: reduce, concatenate or move only dims >= 1")


def check_batch_dims(node: fx.Node, value: torch.Tensor, window: bool = True) -> None:
    """At run time, with ``value`` (the node's tensor input) known: refuse a negative dim
    that resolves to dim 0 (``torch.cat([a, b], -2)`` of ``[B, C]`` values, ``h.mT`` of a
    ``[B, C]`` value), which the converter could not see. Called by the engine on every
    input-dependent node; ``window``: the node reads a spiking window (else the analog input).

    Raises:
        SnnconvError: the node acts on dim 0 of ``value``.
    """
    if node.op in ("call_function", "call_method") and _touches_batch(node, value.dim()):
        raise _unsupported(f"{_batch_op_name(node)} over dim 0", node.name, _batch_fix(window))


_CONTAINER_METHODS = {"chunk", "split", "size", "unbind", "split_with_sizes"}
_CONTAINER_FUNCTIONS = {torch.chunk, torch.split, torch.unbind, getattr}


def _indexes_batch(node: fx.Node, rank: int | None = None) -> bool:
    """Does ``value[index]`` select along dim 0 of a tensor (``h[0]``, ``h[1:]``, ``h[None]``,
    ``h[idx]``)? Indexing a list or tuple (``h.chunk(2, 1)[0]``, ``x.shape[0]``) does not.
    With ``rank`` known, an Ellipsis that covers no dim (``h[..., 0:2, :, :, :]`` of a
    4-d ``h``) passes dim 0 to the index after it."""
    base, index = node.args[0], node.args[1]
    if not isinstance(base, fx.Node):
        return False
    if (base.op == "call_method" and base.target in _CONTAINER_METHODS) or (
            base.op == "call_function" and base.target in _CONTAINER_FUNCTIONS):
        return False
    # values, indices = nn.MaxPool2d(..., return_indices=True)(x): a tuple, not the batch
    if base.op == "call_module" and base.graph.owning_module is not None:
        try:
            if getattr(base.graph.owning_module.get_submodule(str(base.target)), "return_indices", False):
                return False
        except AttributeError:
            pass
    entries = list(index) if isinstance(index, tuple) else [index]
    first = entries[0] if entries else slice(None)
    if first is Ellipsis and rank is not None:
        consumed = sum(e is not None and e is not Ellipsis for e in entries)
        if consumed >= rank:  # the Ellipsis stands for no dim: the next entry indexes dim 0
            first = next((e for e in entries[1:] if e is not Ellipsis), slice(None))
    return not (first is Ellipsis or (isinstance(first, slice) and first == slice(None)))


def _dims_of(value) -> list:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _module_touches_batch(module: nn.Module) -> bool:
    """nn.Flatten(0) / nn.Unflatten(0, ...): a module that merges or splits the batch."""
    if isinstance(module, nn.Flatten):
        return module.start_dim == 0
    if isinstance(module, nn.Unflatten):
        return module.dim == 0
    return False


_SIZE_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv}


def _sample_size(value) -> bool:
    """A number or a size read off a dim >= 1 (``h.size(2)``, ``h.shape[-1]``, ``C, H, W``
    of ``B, C, H, W = h.shape``), or arithmetic of them: the same for one sample and for a
    window of steps. Not the batch size (dim 0), which the engine scales."""
    if not isinstance(value, fx.Node):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if value.op == "call_function" and value.target in _SIZE_ARITHMETIC:
        return all(_sample_size(a) for a in value.args) and not value.kwargs
    if value.op == "call_method" and value.target == "size":
        dim = value.args[1] if len(value.args) > 1 else value.kwargs.get("dim")
    elif value.op == "call_function" and value.target is operator.getitem and isinstance(value.args[0], fx.Node):
        shape = value.args[0]
        reads_shape = (shape.op == "call_function" and shape.target is getattr and shape.args[1:] == ("shape",)) or (
            shape.op == "call_method" and shape.target == "size" and len(shape.args) == 1 and not shape.kwargs)
        dim = value.args[1] if reads_shape else None
    else:
        return False
    return isinstance(dim, int) and not isinstance(dim, bool) and (dim >= 1 or dim == -1)


def _check_supported(node: fx.Node, modules: dict[str, nn.Module], dynamic: set, spiking: set, max_pool: str | None = None) -> None:
    if node.op in ("placeholder", "output", "get_attr") or node not in dynamic or _sample_size(node):
        return  # values that do not depend on the input are used as they are; so are sizes of dims >= 1
    where = _where(node)
    op = lookup(node, modules)
    if op is not None and op.kind == "activation":
        op = None  # an activation that did not become a site (Hardtanh(-1, 1)): not an affine layer
    if node.op == "call_module":
        module = modules[node.target]
        kind = type(module)
        if op is not None and op.name == "max_pool_gate":
            return
        if op is not None and op.name in _MAX_POOL_OPS:
            if node in spiking:
                raise _unsupported(f"{kind.__name__} after a spiking layer", where, _max_pool_fix(max_pool))
            return
        if op is not None and _module_touches_batch(module):
            raise _unsupported(f"{kind.__name__} over dim 0", where, _batch_fix(node in spiking))
        if op is not None and op.name == "upsample" and module.mode not in _NEAREST:
            raise _unsupported(f"Upsample mode={module.mode}", where, "use mode='nearest'")
        if op is not None:
            return
        if isinstance(module, _SAMPLE_NORMS):
            raise _unsupported(kind.__name__, where, _SAMPLE_NORM_FIX)
        _refuse_inside_user_module(node, kind.__name__)
        raise _unsupported(kind.__name__, where, "use conv/linear/average-pool layers with ReLU, QCFS or ClipFloor "
                           "activations, or map a custom activation class with convert(..., activations={Class: ...})")
    target = node.target
    name = target if node.op == "call_method" else getattr(target, "__name__", str(target))
    if op is not None and op.name == "div" and node.kwargs.get("rounding_mode") is not None and node in spiking:
        what = f"{name} with rounding_mode={node.kwargs['rounding_mode']!r}"
        _refuse_inside_user_module(node, what)  # a quantiser written by hand: the activations= mapping
        raise _unsupported(what, where, "rounding is not affine (the rounded average of the spikes is not the average of "
                           "rounded spikes): divide without rounding_mode, or round inside an activation (QCFS)")
    if op is not None and op.kind == "synaptic" and node.op == "call_function":
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        if isinstance(weight, fx.Node) and weight in dynamic:  # conv(h, W(x)): a product of two input-dependent values
            raise _unsupported(f"{name} with an input-dependent weight", where,
                               "a product of two input-dependent values has no spiking form: give it a weight that is a "
                               "parameter or buffer (nn.Conv2d / nn.Linear, or F.conv2d(x, self.weight)); an "
                               "input-dependent bias is fine")
    if op is not None and op.name in ("mul", "div"):
        operands = [a for a in list(node.args) + list(node.kwargs.values()) if not _sample_size(a)]  # h / h.size(2): a number
        divisor = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        divisor_dynamic = op.name == "div" and isinstance(divisor, fx.Node) and divisor in dynamic and not _sample_size(divisor)
        if sum(isinstance(a, fx.Node) and a in dynamic for a in operands) <= 1 and not divisor_dynamic:
            return
        _refuse_inside_user_module(node, f"a {name} of two input-dependent values")
        raise _unsupported(f"{name} of two input-dependent values", where,
                           "multiply or divide only by numbers, parameters or buffers")
    if node.op == "call_function" and op is not None and op.name in _MAX_POOL_OPS:
        if node in spiking:
            raise _unsupported(f"{name} after a spiking layer", where, _max_pool_fix(max_pool))
        return
    if node.op == "call_function" and target is F.batch_norm:  # the eval-mode per-channel affine map of nn.BatchNorm
        stats = [node.args[i] if len(node.args) > i else node.kwargs.get(key) for i, key in ((1, "running_mean"), (2, "running_var"))]
        training = node.args[5] if len(node.args) > 5 else node.kwargs.get("training", False)
        if training is False and all(isinstance(a, fx.Node) and a not in dynamic for a in stats):
            return
        raise _unsupported(f"batch_norm training={training}", where, "pass running statistics (buffers) and "
                           "training=False (F.batch_norm(x, mean, var, weight, bias, False)) or use nn.BatchNorm")
    if node.op == "call_function" and target is F.interpolate and (
            node.args[3] if len(node.args) > 3 else node.kwargs.get("mode", "nearest")) not in _NEAREST:
        raise _unsupported("interpolate", where, "use mode='nearest'")
    if node.op == "call_function" and target is F.pad:
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        if mode == "constant" and not value:
            return
        raise _unsupported(f"pad mode={mode} value={value}", where, "pad with zeros only (mode='constant', value=0)")
    if op is not None:
        if _touches_batch(node):
            raise _unsupported(f"{_batch_op_name(node)} over dim 0", where, _batch_fix(node in spiking))
        return
    what = f"method .{name}()" if node.op == "call_method" else f"function {name}"
    if node.op == "call_function" and target in _SAMPLE_NORM_FUNCTIONS:
        raise _unsupported(what, where, _SAMPLE_NORM_FIX)
    if name in _MATRIX_PRODUCTS:  # x @ W, torch.einsum("bc,cd->bd", x, W): a weight matrix written by hand
        raise _unsupported(what, where, "write a product with a weight matrix W as F.linear(x, W.T) (bias: F.linear(x, W.T, b)) "
                           "or an nn.Linear; a product of two input-dependent values (attention) has no spiking form")
    _refuse_inside_user_module(node, what)
    raise _unsupported(what, where, "express it with supported layers (conv, linear, avg-pool, add, cat)")


_NEAREST = ("nearest", "nearest-exact")  # each output reads one input value: a selection, exact on spikes
_SAMPLE_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm,
                 *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
_SAMPLE_NORM_FUNCTIONS = {F.group_norm, F.layer_norm, F.instance_norm, F.local_response_norm, F.normalize,
                          *((F.rms_norm,) if hasattr(F, "rms_norm") else ())}
_SAMPLE_NORM_FIX = ("it divides by statistics of each sample's own values (not a fixed affine map), which spike counts "
                    "cannot carry: use BatchNorm (an affine map in eval, folded into the conv) and retrain the source ANN")
_MATRIX_PRODUCTS = {"matmul", "mm", "bmm", "einsum", "addmm", "tensordot", "inner", "mv", "__matmul__"}


_METADATA = {"dtype", "device", "ndim", "is_cuda", "layout"}


def reads_metadata(node: fx.Node) -> bool:
    """``h.dtype``, ``h.device``, ``h.ndim``, ``h.dim()``: the same for one sample and for
    a window of steps, never a value of the input. A tensor built with them
    (``torch.zeros(4, dtype=h.dtype, device=h.device)``) is a constant."""
    return (node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] in _METADATA) or (
        node.op == "call_method" and node.target in ("dim", "get_device"))


def _downstream(graph: fx.Graph, roots) -> set[fx.Node]:
    """``roots`` and every node computed from their values (not from their dtype or device)."""
    found = set(roots)
    for node in graph.nodes:
        if node not in found and not reads_metadata(node) and any(i in found for i in node.all_input_nodes):
            found.add(node)
    return found


def input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """The nodes whose value depends on the input's values (and so carry its batch
    dimension, a window of steps in the SNN): the placeholders and every node computed
    from them, except through metadata reads (``h.dtype``, ``h.device``)."""
    return _downstream(graph, [n for n in graph.nodes if n.op == "placeholder"])


_MAX_POOL_FUNCTIONS = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3}


def _gate_max_pools(graph_module: fx.GraphModule, spiking: set) -> None:
    """Replace each max pooling after a spiking layer by a :class:`MaxPoolGate`: a
    ``nn.MaxPool1d/2d/3d`` module in place, an ``F.max_pool1d/2d/3d`` call by a gate
    module with its arguments (either one that returns indices is left, and refused)."""
    for index, node in enumerate(list(graph_module.graph.nodes)):
        if node not in spiking:
            continue
        if node.op == "call_module":
            module = graph_module.get_submodule(node.target)
            if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) and not module.return_indices:
                parent, _, name = node.target.rpartition(".")
                setattr(graph_module.get_submodule(parent) if parent else graph_module, name, MaxPoolGate.from_module(module))
        elif node.op == "call_function" and node.target in _MAX_POOL_FUNCTIONS and node.args:
            gate = MaxPoolGate.from_call(_MAX_POOL_FUNCTIONS[node.target], node.args[1:], dict(node.kwargs))
            if gate is None:
                continue
            name = free_name(graph_module, "max_pool_gate", index)
            graph_module.add_submodule(name, gate)
            node.op, node.target, node.args, node.kwargs = "call_module", name, node.args[:1], {}
    graph_module.recompile()


def _squeeze_keeps_batch(graph: fx.Graph, dynamic: set) -> None:
    """``h.squeeze()`` / ``torch.squeeze(h)`` without dims on an input-dependent value
    becomes :func:`~snnconv.convert.ops.squeeze_samples` (keeps dim 0): the same for a
    batch > 1, and the batch survives a one-sample run (probes, one image)."""
    for node in graph.nodes:
        squeezes = (node.op == "call_method" and node.target == "squeeze") or (
            node.op == "call_function" and node.target is torch.squeeze)
        if squeezes and node in dynamic and len(node.args) == 1 and not node.kwargs:
            node.op, node.target = "call_function", squeeze_samples


def mark_activation_sites(graph_module: fx.GraphModule, max_pool: str | None = None) -> fx.GraphModule:
    """Replace every activation node by an :class:`ActivationSite` module, in place.

    ``max_pool="gate"``: max-pool modules after a spiking layer become
    :class:`~snnconv.convert.max_pool.MaxPoolGate` (approximate); otherwise they are refused.

    Every site gets ``path``, the user's name of the activation (:func:`user_path`).
    Which nodes convert is the table of operations (:mod:`snnconv.convert.ops`).

    Raises:
        SnnconvError: for any node the SNN cannot represent (max pooling after a spiking
            layer, GELU, LSTM, a multiplication of two input-dependent tensors, ...), a
            QCFS/clip-floor lambda <= 0, ``max_pool`` other than None or ``"gate"``, and a
            model with no activation. A node traced inside a user's module is reported
            with that module's name and class (see ``convert(..., activations=)``).
    """
    modules = dict(graph_module.named_modules())
    sites = []
    calls: dict[str, int] = {}
    next_site = 0
    inputs = _downstream(graph_module.graph, [n for n in graph_module.graph.nodes if n.op == "placeholder"])
    for node in list(graph_module.graph.nodes):
        if node not in inputs:
            continue  # an activation of a constant (a parameter, a buffer) is a constant: computed as it is
        site = _site_for(node, modules)
        if site is None:
            continue
        name = free_name(graph_module, "site", next_site)
        next_site = int(name.rpartition("_")[2]) + 1
        path = user_path(node)
        calls[path] = calls.get(path, 0) + 1
        site.path = path if calls[path] == 1 else f"{path}#{calls[path]}"
        graph_module.add_submodule(name, site)
        with graph_module.graph.inserting_after(node):
            new = graph_module.graph.call_module(name, (node.args[0],))
        new.meta = dict(node.meta)
        if _in_place(node, modules) and isinstance(node.args[0], fx.Node):
            _apply_in_place(graph_module.graph, node, new, modules)
        node.replace_all_uses_with(new)
        graph_module.graph.erase_node(node)
        sites.append(new)
    modules = dict(graph_module.named_modules())
    graph = graph_module.graph
    dynamic = input_dependent(graph)
    spiking = _downstream(graph, sites)
    if max_pool not in (None, "gate"):
        raise SnnconvError(f"max_pool must be None or 'gate', got {max_pool!r}")
    if max_pool == "gate":
        _gate_max_pools(graph_module, spiking)
        modules = dict(graph_module.named_modules())
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), ActivationSite):
            continue
        _check_supported(node, modules, dynamic, spiking, max_pool)
    _squeeze_keeps_batch(graph, dynamic)
    if not sites:
        raise SnnconvError("the model has no activation to convert: add ReLU, QCFS or ClipFloor activations")
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


def activation_sites(graph_module: nn.Module) -> list[tuple[str, ActivationSite]]:
    """The activation sites of a marked graph, in execution order."""
    return [(name, m) for name, m in graph_module.named_modules() if isinstance(m, ActivationSite)]

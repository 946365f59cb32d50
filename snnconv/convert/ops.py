"""The table of operations: every layer and function the converter knows, registered once.

Each :class:`Op` says, for all its spellings (module classes, ``torch`` / ``F.``
functions, tensor-method names):

* **kind**: ``"synaptic"`` (weights and bias: conv, transposed conv, linear; a spike
  reaching it costs accumulates), ``"pooling"`` (average, adaptive average or max
  pooling), ``"scale"`` (a per-channel affine or a multiplication / division by a
  constant), ``"structural"`` (moves, selects, sums or pads values: flatten, cat, add,
  getitem, nearest upsampling, ...), or ``"activation"`` (becomes a spiking layer).
* **cost**: how :mod:`snnconv.insight` counts it (``Op.cost``, one of :data:`COST_RULES`):
  ``"synapse"`` ends a spike's path and costs one accumulate per weight it meets, and
  ``output elements x inputs per output`` MACs in the ANN (``input elements x outputs
  per input`` for a transposed conv); ``"sum_pool"`` / ``"adaptive_sum"`` count once per
  pool window holding the spike (the pool folded into the next kernel); ``"pass"``
  carries each spike to one place (scaling by a constant); ``"unsigned_sum"`` counts one
  path per operand whatever its sign (a - b, -a); ``"mean_as_sum"`` counts a mean as a
  sum; ``"as_is"`` runs the op itself on the 0/1 structure (flatten, cat, add, pad, ...).
* **sleep**: ``Op.constant_in_sleep``: may its output hold a constant drive (a bias, an
  added number or tensor)? The engine then switches that constant off in wake-sleep
  sleep steps (output f(s) - f(0)); an op that only moves, selects, scales or averages
  values cannot add one and is left as it is.
* **nir**: its NIR node (``Op.nir``), or None with the reason in ``Op.nir_note``.

A new layer is one entry in :data:`OPS`; :func:`lookup` finds the entry of a graph node.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..activations import QuantizedClip
from ..errors import SnnconvError
from .fold_bn import ChannelAffine
from .max_pool import MaxPoolGate

KINDS = ("synaptic", "pooling", "scale", "structural", "activation")
COST_RULES = ("synapse", "sum_pool", "adaptive_sum", "gate", "pass", "unsigned_sum", "mean_as_sum", "as_is", "neuron")


@dataclass(frozen=True)
class Op:
    """One supported operation and every way of writing it.

    Attributes:
        name: the table key, e.g. ``"conv2d"``.
        kind: one of :data:`KINDS`.
        modules: module classes (matched with ``isinstance``, in table order).
        functions: ``torch`` / ``torch.nn.functional`` / ``operator`` callables.
        methods: tensor-method names (``x.view(...)``).
        cost: the counting rule of :mod:`snnconv.insight`, one of :data:`COST_RULES`.
        constant_in_sleep: the output may hold a constant drive, which sleep steps switch off.
        dims: spatial dimensions (1, 2, 3) of a conv or pool, else None.
        nir: the NIR node it exports to (``"Conv2d"``, ``"Affine"``, ...), or None.
        nir_note: a condition on the NIR form, or why there is none.
        convertible: the converter accepts it (conditions on arguments are checked in
            :mod:`snnconv.convert.activation_sites`).
    """

    name: str
    kind: str
    modules: tuple[type, ...] = ()
    functions: tuple[Callable, ...] = ()
    methods: tuple[str, ...] = ()
    cost: str = "as_is"
    constant_in_sleep: bool = False
    dims: int | None = None
    nir: str | None = None
    nir_note: str = ""
    convertible: bool = True
    spellings: tuple = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.cost not in COST_RULES:
            raise SnnconvError(f"op {self.name!r}: kind must be one of {KINDS} and cost one of {COST_RULES}")
        # one spelling may have two names (F.relu_ is torch.relu_): keep each once
        object.__setattr__(self, "spellings", tuple(dict.fromkeys(self.modules + self.functions + self.methods)))


def squeeze_samples(x: torch.Tensor) -> torch.Tensor:
    """``x.squeeze()`` that keeps dim 0: every size-1 dim but the batch is removed.

    The converter writes it for a ``squeeze()`` without dims on an input-dependent value:
    with batch 1 (a one-sample probe, a one-image input) a plain squeeze would drop the
    batch, which carries time in the SNN; for batch > 1 it is the same function.
    Shapes: ``[B, ...]`` -> ``[B, ...]`` without its other size-1 dims.
    """
    return x.squeeze(tuple(range(1, x.dim()))) if x.dim() > 1 else x


_NO_NIR_CONV3D = "NIR export covers 1-d and 2-d convolutions"
_NO_NIR_GLUE = "the NIR export covers chains of conv / linear / average-pool / flatten layers"
_NO_NIR_POOL = "the NIR export covers 2-d average pooling (SumPool2d)"


def _by_dims(make: Callable[[int], Op]) -> list[Op]:
    return [make(d) for d in (1, 2, 3)]


_CONV_MODULES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T_MODULES = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_CONV_T_FUNCTIONS = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_AVG = {1: (nn.AvgPool1d, F.avg_pool1d), 2: (nn.AvgPool2d, F.avg_pool2d), 3: (nn.AvgPool3d, F.avg_pool3d)}
_ADAPTIVE = {1: (nn.AdaptiveAvgPool1d, F.adaptive_avg_pool1d), 2: (nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d),
             3: (nn.AdaptiveAvgPool3d, F.adaptive_avg_pool3d)}
_MAX = {1: (nn.MaxPool1d, F.max_pool1d), 2: (nn.MaxPool2d, F.max_pool2d), 3: (nn.MaxPool3d, F.max_pool3d)}
_ADAPTIVE_MAX = {1: (nn.AdaptiveMaxPool1d, F.adaptive_max_pool1d), 2: (nn.AdaptiveMaxPool2d, F.adaptive_max_pool2d),
                 3: (nn.AdaptiveMaxPool3d, F.adaptive_max_pool3d)}
_MAX_NOTE = "max pooling is exact only on the analog input; NIR has no max pool"

OPS: tuple[Op, ...] = (
    # synaptic: weights and bias; a spike reaching one costs one accumulate per weight it meets
    *_by_dims(lambda d: Op(f"conv{d}d", "synaptic", (_CONV_MODULES[d],), (_CONV_FUNCTIONS[d],), cost="synapse",
                           constant_in_sleep=True, dims=d, nir=f"Conv{d}d" if d < 3 else None,
                           nir_note="module form, zero padding" if d < 3 else _NO_NIR_CONV3D)),
    *_by_dims(lambda d: Op(f"conv_transpose{d}d", "synaptic", (_CONV_T_MODULES[d],), (_CONV_T_FUNCTIONS[d],),
                           cost="synapse", constant_in_sleep=True, dims=d,
                           nir_note="NIR has no transposed convolution")),
    Op("linear", "synaptic", (nn.Linear,), (F.linear,), cost="synapse", constant_in_sleep=True, nir="Affine",
       nir_note="module form"),
    # pooling
    *_by_dims(lambda d: Op(f"avg_pool{d}d", "pooling", (_AVG[d][0],), (_AVG[d][1],), cost="sum_pool", dims=d,
                           nir="SumPool2d" if d == 2 else None,
                           nir_note="module form; 1/k² folded into the next weights" if d == 2 else _NO_NIR_POOL)),
    *_by_dims(lambda d: Op(f"adaptive_avg_pool{d}d", "pooling", (_ADAPTIVE[d][0],), (_ADAPTIVE[d][1],),
                           cost="adaptive_sum", dims=d, nir="SumPool2d" if d == 2 else None,
                           nir_note="module form, uniform bins only" if d == 2 else _NO_NIR_POOL)),
    Op("max_pool_gate", "pooling", (MaxPoolGate,), cost="gate", constant_in_sleep=True,
       nir_note="the gate follows running spike counts; NIR has no such node"),
    *_by_dims(lambda d: Op(f"max_pool{d}d", "pooling", (_MAX[d][0],), (_MAX[d][1],), constant_in_sleep=True, dims=d,
                           nir_note=_MAX_NOTE)),
    *_by_dims(lambda d: Op(f"adaptive_max_pool{d}d", "pooling", (_ADAPTIVE_MAX[d][0],), (_ADAPTIVE_MAX[d][1],),
                           constant_in_sleep=True, dims=d, nir_note=_MAX_NOTE)),
    # scale: a per-channel affine (folded BatchNorm) or a product / quotient with a constant
    Op("channel_affine", "scale", (ChannelAffine,), cost="pass", constant_in_sleep=True,
       nir_note="a BatchNorm that cannot fold into a conv; fold it (BN after conv) for NIR"),
    Op("batch_norm", "scale", functions=(F.batch_norm,), cost="pass", constant_in_sleep=True,
       nir_note="F.batch_norm with running statistics and training=False; use nn.BatchNorm after a conv for NIR"),
    Op("mul", "scale", functions=(operator.mul, torch.mul, torch.multiply), methods=("mul", "multiply"), cost="pass",
       nir_note=_NO_NIR_GLUE),
    Op("div", "scale", functions=(operator.truediv, torch.div, torch.divide, torch.true_divide),
       methods=("div", "divide", "true_divide"), cost="pass", nir_note=_NO_NIR_GLUE),
    # structural: move, select, sum or pad values
    Op("add", "structural", functions=(operator.add, torch.add), methods=("add",), constant_in_sleep=True,
       nir_note="a residual add needs θ folded into one branch only"),
    Op("sub", "structural", functions=(operator.sub, torch.sub, torch.subtract), methods=("sub", "subtract"), cost="unsigned_sum",
       constant_in_sleep=True, nir_note=_NO_NIR_GLUE),
    Op("neg", "structural", functions=(operator.neg, torch.neg, torch.negative), methods=("neg", "negative"), cost="unsigned_sum",
       nir_note=_NO_NIR_GLUE),
    Op("flatten", "structural", (nn.Flatten,), (torch.flatten,), ("flatten",), nir="Flatten"),
    Op("reshape", "structural", functions=(torch.reshape,), methods=("reshape", "view", "reshape_as", "view_as"), nir="Flatten",
       nir_note="only to one vector per sample"),
    Op("unflatten", "structural", (nn.Unflatten,), methods=("unflatten",), nir_note=_NO_NIR_GLUE),
    Op("identity", "structural", (nn.Identity,), (torch.clone, torch.detach), ("contiguous", "clone", "detach"), nir="identity",
       nir_note="no node: its input passes on"),
    Op("upsample", "structural", (nn.Upsample,), (F.interpolate,), nir_note=_NO_NIR_GLUE),
    Op("pixel_shuffle", "structural", (nn.PixelShuffle, nn.PixelUnshuffle), (F.pixel_shuffle, F.pixel_unshuffle),
       nir_note=_NO_NIR_GLUE),
    Op("pad", "structural", (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d), (F.pad,), constant_in_sleep=True,
       nir_note=_NO_NIR_GLUE),
    Op("cat", "structural", functions=(torch.cat, torch.concat, torch.concatenate),
       nir_note="a concatenation needs θ folded per branch"),
    Op("stack", "structural", functions=(torch.stack,), nir_note=_NO_NIR_GLUE),
    Op("getitem", "structural", functions=(operator.getitem,), nir_note=_NO_NIR_GLUE),
    Op("getattr", "structural", functions=(getattr,), nir_note=_NO_NIR_GLUE),
    Op("size", "structural", methods=("size",), nir_note=_NO_NIR_GLUE),
    Op("mean", "structural", functions=(torch.mean,), methods=("mean",), cost="mean_as_sum", nir_note=_NO_NIR_GLUE),
    Op("sum", "structural", functions=(torch.sum,), methods=("sum",), nir_note=_NO_NIR_GLUE),
    Op("permute", "structural", functions=(torch.permute,), methods=("permute",), nir_note=_NO_NIR_GLUE),
    Op("transpose", "structural", functions=(torch.transpose, torch.swapaxes, torch.swapdims),
       methods=("transpose", "swapaxes", "swapdims"), nir_note=_NO_NIR_GLUE),
    Op("squeeze", "structural", functions=(torch.squeeze, squeeze_samples), methods=("squeeze",), nir_note=_NO_NIR_GLUE),
    Op("unsqueeze", "structural", functions=(torch.unsqueeze,), methods=("unsqueeze",), nir_note=_NO_NIR_GLUE),
    Op("movedim", "structural", functions=(torch.movedim, torch.moveaxis), methods=("movedim", "moveaxis"),
       nir_note=_NO_NIR_GLUE),
    Op("chunk", "structural", functions=(torch.chunk,), methods=("chunk",), nir_note=_NO_NIR_GLUE),
    Op("split", "structural", functions=(torch.split,), methods=("split",), nir_note=_NO_NIR_GLUE),
    Op("expand", "structural", methods=("expand", "expand_as"), nir_note=_NO_NIR_GLUE),
    # activations: each becomes a spiking layer (snnconv.convert.activation_sites decides its kind)
    Op("quantized_clip", "activation", (QuantizedClip,), cost="neuron", nir="IF", nir_note="IF conversions only"),
    Op("relu", "activation", (nn.ReLU,), (F.relu, torch.relu, torch.relu_, F.relu_), ("relu", "relu_"), cost="neuron",
       nir="IF", nir_note="IF conversions only"),
    Op("relu6", "activation", (nn.ReLU6,), (F.relu6,), cost="neuron", nir="IF", nir_note="IF conversions only"),
    Op("hardtanh", "activation", (nn.Hardtanh,), (F.hardtanh, F.hardtanh_), cost="neuron", nir="IF", nir_note="min_val=0 only; IF conversions only"),
    Op("clamp", "activation", functions=(torch.clamp, torch.clip, torch.clamp_, torch.clip_, torch.clamp_min, torch.clamp_min_),
       methods=("clamp", "clip", "clamp_", "clip_", "clamp_min", "clamp_min_"), cost="neuron", nir="IF",
       nir_note="clamp(x, 0, max) and clamp_min(x, 0) only; IF conversions only"),
)

OPS_BY_NAME: dict[str, Op] = {op.name: op for op in OPS}
_BY_FUNCTION: dict = {f: op for op in OPS for f in op.functions}
_BY_METHOD: dict[str, Op] = {m: op for op in OPS for m in op.methods}
# Subclasses before their bases (ReLU6 and Hardtanh: ReLU6 subclasses Hardtanh).
_BY_MODULE: tuple[tuple[type, Op], ...] = tuple(
    sorted(((m, op) for op in OPS for m in op.modules), key=lambda pair: -len(pair[0].__mro__)))


def op_of_module(module: nn.Module) -> Op | None:
    """The table entry of a module instance (``isinstance``, most derived class first), else None."""
    for kind, op in _BY_MODULE:
        if isinstance(module, kind):
            return op
    return None


def lookup(node: fx.Node, modules: dict[str, nn.Module]) -> Op | None:
    """The table entry of an fx node (module call, function call or tensor method), else None.

    Args:
        node: a node of a traced graph.
        modules: ``dict(graph_module.named_modules())`` of that graph.

    Returns:
        The :class:`Op`, or None for placeholders, outputs, attributes, spiking neurons,
        activation sites and anything not in :data:`OPS`.
    """
    if node.op == "call_module":
        module = modules.get(node.target)
        return None if module is None else op_of_module(module)
    if node.op == "call_function":
        try:
            return _BY_FUNCTION.get(node.target)
        except TypeError:  # an unhashable target
            return None
    if node.op == "call_method":
        return _BY_METHOD.get(node.target)
    return None


def constant_in_sleep(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """The sleep rule: may ``node``'s output hold a constant drive (bias, added constant)?

    True for synaptic layers, adds, subtractions, padding and per-channel affines, and
    for anything not in the table (the engine then evaluates the node on zero input and
    subtracts what it finds in sleep steps); False for ops that only move, select, scale
    or average values.
    """
    op = lookup(node, modules)
    return True if op is None else op.constant_in_sleep


def spelling_name(spelling) -> str:
    """A readable name of one spelling: the class or function name, or ``.method``."""
    if isinstance(spelling, str):
        return f".{spelling}"
    return getattr(spelling, "__name__", str(spelling))

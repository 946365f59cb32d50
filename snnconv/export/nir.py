"""Export IF-converted networks to NIR (Neuromorphic Intermediate Representation).

NIR (``pip install 'snnconv[nir]'``) has an ``IF`` node that fires when v > v_threshold
and *resets to* v_reset. Our IF neuron fires when v >= θ and resets by *subtraction*
(v -= θ), starting from v(0) = φ·θ. NIR has no field for either, so every IF node
carries them in its metadata::

    {"reset": "subtract", "threshold_comparison": ">=", "initial_potential": φ·θ,
     "time_step": 1.0, "neuron": "if"}

and export warns (:class:`NIRSemanticsWarning`) that a consumer reading only the
standard fields will simulate a different network.

Mapping (per step, dt = 1, v[t] = v[t-1] + r·I[t]):

* conv -> ``Conv1d``/``Conv2d`` (bias every step: direct coding), linear -> ``Affine``;
* spiking layer -> ``IF`` emitting 0/1 spikes; the θ our neurons multiply their
  spikes by is folded into the next conv/linear weights (W' = W·θ);
* average pooling -> ``SumPool2d`` with its 1/k² folded into the next weights too
  (adaptive pooling when its bins are uniform); flatten -> ``Flatten``.

Only chains (each layer read by layers of one path) are exported: a residual add or a
concatenation would need the spikes scaled by θ on one branch only. GN counts, CIF
ternary spikes and TPP's two-phase windows have no NIR primitive and are refused.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn

from ..convert.ops import lookup
from ..errors import SnnconvError, check
from ..files import atomic_write
from ..inputs import check_input
from ..network import SpikingNetwork
from ..neurons import CIFNeuron, GroupNeuron, SpikingNeuron, TPPNeuron


class NIRSemanticsWarning(UserWarning):
    """The exported graph relies on metadata (reset by subtraction, v(0), >=) NIR does not standardise."""


_WHY_NOT = {
    TPPNeuron: "TPP integrates a whole window before firing Bernoulli spikes; NIR has no two-phase stochastic neuron",
    CIFNeuron: "CIF emits ternary (+1/-1) spikes and tracks its spike count; NIR neurons emit binary spikes",
}


def _import_nir():
    try:
        import nir
    except ImportError:
        raise SnnconvError("NIR export needs the nir package: pip install 'snnconv[nir]' (or pip install nir)") from None
    return nir


def _check_neuron(name: str, neuron: SpikingNeuron) -> None:
    for kind, why in _WHY_NOT.items():
        if isinstance(neuron, kind):
            raise SnnconvError(f"layer {name!r}: {why}. Export an IF conversion: convert(model, 'if')")
    if isinstance(neuron, GroupNeuron) and neuron.params.group_size != 1:
        raise SnnconvError(f"layer {name!r}: a group neuron emits counts 0..{neuron.params.group_size} per step and NIR "
                           "neurons emit binary spikes. Export an IF conversion: convert(model, 'if') (GN with group_size=1)")
    if not isinstance(neuron, GroupNeuron):
        raise SnnconvError(f"layer {name!r}: neuron {type(neuron).__name__} has no NIR form; export an IF conversion")
    if neuron.threshold.numel() != 1:
        raise SnnconvError(f"layer {name!r} has {neuron.threshold.numel()} thresholds; the NIR export folds one θ per layer "
                           "into the next weights: use a scalar threshold per layer")


def _uniform_bins(m: int, n: int) -> tuple[int, int] | None:
    """(kernel, stride) if adaptive pooling m -> n uses equal bins at a constant stride."""
    starts = [(i * m) // n for i in range(n)]
    ends = [-((-(i + 1) * m) // n) for i in range(n)]
    sizes = {e - s for s, e in zip(starts, ends)}
    strides = {b - a for a, b in zip(starts, starts[1:])} or {1}
    return (sizes.pop(), strides.pop()) if len(sizes) == 1 and len(strides) == 1 else None


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _explicit_padding(module: nn.Conv2d):
    """A Conv2d's padding as two ints where "same"/"valid" has a symmetric form (portable
    to readers that only take ints), else the string."""
    if not isinstance(module.padding, str):
        return _pair(module.padding)
    if module.padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for d, k in zip(_pair(module.dilation), _pair(module.kernel_size))]
    return tuple(t // 2 for t in total) if all(t % 2 == 0 for t in total) else module.padding


def _fix_conv_types(node, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> None:
    """Set a NIR conv node's input/output types to the shapes the layer really has.

    nir 1.0's own inference takes the input channels as ``weight.shape[1]`` (C_in /
    groups, wrong for groups > 1) and every spatial kernel size as ``weight.shape[2]``
    (wrong for a (3, 5) kernel), and then refuses its own graph.
    """
    import numpy as np

    node.input_type = {"input": np.array(input_shape)}
    node.output_type = {"output": np.array(output_shape)}


@dataclass(frozen=True)
class _Layer:
    """One fx node to export: the node, its module (None for functions), its entry in the
    table of operations, and one sample's input and output shapes."""

    node: fx.Node
    module: nn.Module | None
    op: object
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def _numpy(t: torch.Tensor):
    return t.detach().cpu().numpy()


def _weights_node(nir, layer: _Layer, factor: float):
    """conv / linear -> ``Conv1d`` / ``Conv2d`` / ``Affine``, the incoming factor folded into W."""
    import numpy as np

    module, form, name = layer.module, layer.op.nir, layer.node.name
    base = next(kind for kind in (nn.Linear, nn.Conv1d, nn.Conv2d) if isinstance(module, kind))
    check(type(module).forward is base.forward,  # a QAT layer fake-quantises its weight: not the stored one
          f"layer {str(layer.node.target)!r} ({base.__name__} subclass) computes its weight when it runs ({type(module).__module__}."
          f"{type(module).__name__}), and NIR export carries stored weights: export a model with plain nn.{base.__name__} "
          "layers holding the weights it computes with")
    check(getattr(module, "padding_mode", "zeros") == "zeros", f"layer {name!r}: only zero padding exports to NIR")
    weight = _numpy(module.weight * factor)
    bias = _numpy(module.bias) if module.bias is not None else np.zeros(weight.shape[0], dtype=weight.dtype)
    if form == "Affine":
        check(len(layer.in_shape) == 1, f"layer {name!r} (Linear) reads a {list(layer.in_shape)} input per sample, and NIR's "
              "Affine reads one vector: flatten before it (nn.Flatten(), or x.flatten(1)) to export")
        return nir.Affine(weight=weight, bias=bias)
    if form == "Conv2d":
        node = nir.Conv2d(input_shape=layer.in_shape[1:], weight=weight, stride=_pair(module.stride),
                          padding=_explicit_padding(module), dilation=_pair(module.dilation), groups=module.groups, bias=bias)
    else:
        node = nir.Conv1d(input_shape=layer.in_shape[1], weight=weight, stride=module.stride[0],
                          padding=module.padding if isinstance(module.padding, str) else module.padding[0],
                          dilation=module.dilation[0], groups=module.groups, bias=bias)
    _fix_conv_types(node, layer.in_shape, layer.out_shape)
    return node


def _neuron_node(nir, layer: _Layer):
    """A spiking layer -> ``IF`` emitting 0/1 spikes; returns it and θ (snnconv passes θ·s on)."""
    import numpy as np

    module, name, size = layer.module, layer.node.name, layer.out_shape
    check(getattr(module, "offset", None) is None,
          f"layer {name!r} has a per-neuron v(0) from potential calibration, which NIR export does not carry: "
          "use snn_calibration='light' (biases) for an exported network")
    theta = float(module.threshold)
    node = nir.IF(r=np.ones(size), v_threshold=np.full(size, theta), v_reset=np.zeros(size),
                  metadata={"reset": "subtract", "threshold_comparison": ">=",
                            "initial_potential": module.params.initial_potential * theta, "time_step": 1.0, "neuron": "if"})
    return node, theta


def _pool_node(nir, layer: _Layer):
    """Average or adaptive average pooling -> ``SumPool2d``; returns it and its divisor (k²)."""
    import numpy as np

    module, name = layer.module, layer.node.name
    if layer.op.name == "avg_pool2d":
        kernel, stride, padding = _pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(module.padding)
        check(not module.ceil_mode and (module.count_include_pad or padding == (0, 0)),
              f"layer {name!r}: average pooling with ceil_mode or count_include_pad=False has a varying divisor; "
              "NIR's SumPool2d + one folded scale cannot express it")
        divisor = module.divisor_override or kernel[0] * kernel[1]
    else:
        (h, w), out = layer.in_shape[1:], _pair(module.output_size)
        bins = [_uniform_bins(m, o if o is not None else m) for m, o in zip((h, w), out)]
        if None in bins:
            raise SnnconvError(f"layer {name!r}: adaptive pooling {(h, w)} -> {out} has unequal bins, which no "
                               "SumPool2d expresses; use an input size divisible by the output size")
        kernel, stride, padding = (bins[0][0], bins[1][0]), (bins[0][1], bins[1][1]), (0, 0)
        divisor = kernel[0] * kernel[1]
    return nir.SumPool2d(kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array(padding)), divisor


def _flatten_node(nir, layer: _Layer):
    """``nn.Flatten`` / ``torch.flatten`` (or a reshape to one dim per sample) -> ``Flatten``."""
    import numpy as np

    n, module = layer.node, layer.module
    if module is not None:
        start, end = module.start_dim, module.end_dim
    else:
        start, end = 1, -1
        if layer.op.name == "flatten":
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
            if start == 0:
                raise SnnconvError(f"layer {n.name!r} flattens the batch dimension: use start_dim=1")
    # NIR's dims leave out the batch: dim d >= 1 is d - 1 there; a negative dim counts from the end in both
    return nir.Flatten(input_type={"input": np.array(layer.in_shape)}, start_dim=start - 1 if start > 0 else start,
                       end_dim=end - 1 if end > 0 else end)


def _layer_node(nir, layer: _Layer, factor: float) -> tuple[object, float] | None:
    """The NIR node of one layer and the factor its output carries (snnconv = factor * NIR),
    by the form the table of operations gives it; None for an identity.

    Raises:
        SnnconvError: a layer with no NIR form (named, with its class), or one whose
            parameters NIR cannot express (padding mode, varying pool divisor, ...).
    """
    module, form = layer.module, (layer.op.nir if layer.op is not None else None)
    if form == "identity":
        return None
    if form in ("Affine", "Conv1d", "Conv2d") and module is not None:
        return _weights_node(nir, layer, factor), 1.0
    if isinstance(module, SpikingNeuron):
        return _neuron_node(nir, layer)
    if form == "SumPool2d" and module is not None:
        node, divisor = _pool_node(nir, layer)
        return node, factor / divisor
    if form == "Flatten" and (layer.op.name == "flatten" or len(layer.out_shape) == 1):
        return _flatten_node(nir, layer), factor
    n = layer.node
    what = type(module).__name__ if module is not None else f"{n.op} {getattr(n.target, '__name__', n.target)}"
    raise SnnconvError(f"layer {n.name!r} ({what}) has no NIR export: use conv/linear/average-pool/flatten layers")


def to_nir(snn: SpikingNetwork, input_shape: tuple[int, ...] | list[int], *, warn: bool = True):
    """Build a ``nir.NIRGraph`` computing the same output at every step as ``simulate(snn, x, T)``.

    Args:
        snn: an IF conversion (``convert(model, "if")``) of a chain of conv / linear /
            average-pool / flatten layers.
        input_shape: one sample's shape, e.g. ``(1, 28, 28)`` (no batch dimension).
        warn: emit :class:`NIRSemanticsWarning` about the metadata-only semantics.

    Returns:
        The graph; its ``Input`` is the analog input (applied at every step), its
        ``Output`` the network output per step (average it over steps to classify).

    Each layer exports to the NIR form the table of operations gives it
    (:mod:`snnconv.convert.ops`, ``Op.nir``).

    Raises:
        SnnconvError: nir is not installed; a neuron other than IF (GN counts, CIF, TPP),
            a per-neuron threshold or v(0), a permuted network; a layer with no NIR form
            (named, with its class), a residual add or concatenation (chains only), a
            bad ``input_shape``.
    """
    nir = _import_nir()
    import numpy as np

    from ..insight import GraphProbe

    check(isinstance(snn, SpikingNetwork), f"to_nir() needs a network from snnconv.convert(), got {type(snn).__name__}")
    check(snn.permute is None, "a permuted network shuffles spikes in time, which NIR cannot express: convert without permute")
    for name, neuron in snn.spiking_layers():
        _check_neuron(name, neuron)
    gm = snn.graph
    dtype = next((p.dtype for p in gm.parameters()), torch.float32)
    check(isinstance(input_shape, (tuple, list)) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape),
          f"input_shape must be one sample's shape as positive integers, e.g. (1, 28, 28), got {input_shape!r}")
    sample = check_input(gm, torch.zeros(1, *input_shape, dtype=dtype), "an input of input_shape")
    probe = GraphProbe(gm)
    with torch.no_grad():
        probe.run(sample)
    modules = probe.modules
    shape = {n: tuple(v.shape[1:]) for n, v in probe.values.items() if isinstance(v, torch.Tensor)}

    nodes: dict[str, object] = {}
    edges: list[tuple[str, str]] = []
    # For every fx node: the NIR node that carries its value and the factor between the
    # snnconv value and the NIR signal (snnconv = factor * NIR), folded at the next weights.
    carrier: dict[fx.Node, tuple[str, float]] = {}

    def fold(node: fx.Node, n: fx.Node) -> tuple[str, float]:
        if node not in carrier:
            raise SnnconvError(f"layer {n.name!r} reads {node.name!r}, which the NIR export cannot express")
        return carrier[node]

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            nodes["input"] = nir.Input(input_type={"input": np.array(input_shape)})
            carrier[n] = ("input", 1.0)
            continue
        if n.op == "output":
            (source,) = n.all_input_nodes
            src, factor = fold(source, n)
            if factor != 1.0:  # a spiking layer read directly by the output: scale its spikes
                nodes[f"{source.name}_scale"] = nir.Scale(scale=np.full(shape[source], factor))
                edges.append((src, f"{source.name}_scale"))
                src = f"{source.name}_scale"
            nodes["output"] = nir.Output(output_type={"output": np.array(shape[source])})
            edges.append((src, "output"))
            continue
        inputs = [i for i in n.all_input_nodes if isinstance(probe.values.get(i), torch.Tensor)]
        if len(inputs) != 1:
            raise SnnconvError(f"layer {n.name!r} combines {len(inputs)} tensors (residual add or concatenation): the NIR "
                               "export supports chains only, since θ would have to be folded into one branch")
        src, factor = fold(inputs[0], n)
        layer = _Layer(n, modules.get(n.target) if n.op == "call_module" else None, lookup(n, modules),
                       shape[inputs[0]], shape[n])
        built = _layer_node(nir, layer, factor)
        if built is None:  # an identity: the value passes on unchanged
            carrier[n] = (src, factor)
            continue
        nodes[n.name], carrier[n] = built[0], (n.name, built[1])
        edges.append((src, n.name))
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata={
        "producer": "snnconv", "coding": "direct: the Input drives the graph unchanged at every step",
        "readout": "average the Output over the steps", "neuron_semantics": "see each IF node's metadata",
    })
    if warn:
        warnings.warn("NIR IF nodes reset to v_reset and fire on v > v_threshold; this export needs reset by subtraction, "
                      "v >= threshold and v(0) = initial_potential, recorded only in each node's metadata, which NIR "
                      "consumers may ignore: check your simulator honours them", NIRSemanticsWarning, stacklevel=2)
    return graph


def _conv_types(node) -> None:
    """Recompute a NIR Conv1d/Conv2d node's types from its own fields (see :func:`_fix_conv_types`)."""
    import numpy as np

    weight = np.asarray(node.weight)
    spatial = np.atleast_1d(np.asarray(node.input_shape)).astype(int).tolist()
    dims = len(spatial)
    as_tuple = lambda v: tuple(np.atleast_1d(np.asarray(v)).astype(int).tolist()) * (dims if np.ndim(v) == 0 else 1)  # noqa: E731
    stride, dilation = as_tuple(node.stride), as_tuple(node.dilation)
    kernel = weight.shape[2:]
    if isinstance(node.padding, (str, bytes)):
        mode = node.padding.decode() if isinstance(node.padding, bytes) else node.padding
        out = spatial if mode == "same" else [(n - d * (k - 1) - 1) // s + 1 for n, d, k, s in zip(spatial, dilation, kernel, stride)]
    else:
        padding = as_tuple(node.padding)
        out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(spatial, padding, dilation, kernel, stride)]
    _fix_conv_types(node, (weight.shape[1] * int(node.groups), *spatial), (weight.shape[0], *out))


def read_nir(path: str | Path):
    """Read a NIR file written by :func:`export_nir`, with the conv types nir 1.0 gets wrong fixed.

    ``nir.read`` re-infers every conv node's types with the errors described in
    :func:`_fix_conv_types` and refuses a (3, 5) kernel or ``groups > 1``; this reads
    without that check, recomputes the conv types from each node's weight, padding,
    stride, dilation and groups, then checks the whole graph's types.

    Raises:
        SnnconvError: the file's types do not agree even after the fix.
    """
    nir = _import_nir()
    graph = nir.read(str(path), type_check=False)
    for node in graph.nodes.values():
        if type(node).__name__ in ("Conv1d", "Conv2d") and node.input_shape is not None:
            _conv_types(node)
    try:
        graph.infer_types()
        graph.check_types()
    except ValueError as err:
        raise SnnconvError(f"{str(path)!r}: NIR types do not agree ({err}): the file is not a valid export") from err
    return graph


def export_nir(snn: SpikingNetwork, path: str | Path, input_shape: tuple[int, ...] | list[int], *, warn: bool = True) -> Path:
    """Write :func:`to_nir` of ``snn`` to ``path`` (NIR's HDF5 format), atomically.

    Raises:
        SnnconvError: everything :func:`to_nir` refuses (the file is then not written).
    """
    nir = _import_nir()
    graph = to_nir(snn, input_shape, warn=warn)
    return atomic_write(path, lambda p: nir.write(str(p), graph))

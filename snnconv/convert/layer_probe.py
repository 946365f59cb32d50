"""Read one layer's values out of the ANN and out of the converted SNN (for SNN Calibration).

Layer l of the SNN is the spiking neuron named like the ANN's activation site it
replaced (``site_3`` in both graphs). Its *pre-activation* is the neuron's input:
in the ANN z = W x + b, in the SNN the window's average over the T steps plus the
neuron's v(0) offset / T (what potential calibration adds; same effect as a bias).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..engine import bytes_per_sample, simulate
from ..network import SpikingNetwork
from ..neurons import SpikingNeuron

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_PASS_THROUGH = {operator.add, torch.add}
# One chunk per calibration batch, so every hook sees whole batches.
_NO_SPLIT = 1 << 62


class _Captured(Exception):
    """Raised by a hook once it has what it needs: the rest of the network need not run."""


def _warm(snn: SpikingNetwork, x: torch.Tensor) -> None:
    """Let the engine probe its activation sizes for ``x`` now, before our hooks are in
    place (the probe runs the graph on one sample for one step and is cached)."""
    reference = next(iter(snn.graph.buffers()), None)
    if reference is not None:
        x = x.to(device=reference.device, dtype=next((p.dtype for p in snn.graph.parameters()), reference.dtype))
    bytes_per_sample(snn, x, 1)


def neuron_at(snn: SpikingNetwork, name: str) -> SpikingNeuron:
    """The spiking neuron module at graph path ``name``.

    Raises:
        AttributeError: ``snn`` has no submodule ``name`` (an internal name, never user input).
    """
    return snn.graph.get_submodule(name)


def _ties(snn: SpikingNetwork, layer: nn.Module) -> bool:
    """Does another module of the network hold ``layer``'s weight or bias (tied weights,
    ``conv2.weight = conv1.weight``)? Changing it would move that module's output too."""
    own = {id(p) for p in layer.parameters(recurse=False)}
    return any(module is not layer and any(id(p) in own for p in module.parameters(recurse=False))
               for module in snn.graph.modules())


def bias_layer(snn: SpikingNetwork, name: str) -> tuple[str, nn.Module] | None:
    """The conv/linear layer whose bias shifts neuron ``name``'s input one for one.

    Its output must reach the neuron directly or through additions only (a residual
    sum; not as the scaled operand b of ``torch.add(a, b, alpha=k)``); the first such
    layer in the argument order. None if there is none, and None
    when calibrating that layer would move another neuron's input too: the layer is
    called at several places (shared weights) or holds a weight or bias another layer
    holds too (tied weights), or its output or an addition on the way
    is read elsewhere (a conv feeding two neurons). Calibrating it for one neuron would
    then undo, or spoil, what the other's calibration did.

    Raises:
        Nothing.
    """
    modules = dict(snn.graph.named_modules())
    nodes = snn.graph.graph.nodes
    node = next(n for n in nodes if n.op == "call_module" and n.target == name)
    frontier = list(node.all_input_nodes)
    while frontier:
        current = frontier.pop(0)
        if len(current.users) != 1:
            continue  # read elsewhere too: a shift here is not this neuron's alone
        if current.op == "call_module" and isinstance(modules.get(current.target), _LAYERS):
            calls = sum(n.op == "call_module" and n.target == current.target for n in nodes)
            layer = modules[current.target]
            return (current.target, layer) if calls == 1 and not _ties(snn, layer) else None
        if current.op == "call_function" and current.target in _PASS_THROUGH:
            if current.kwargs.get("alpha", 1) != 1:  # torch.add(a, b, alpha=k): b moves the sum k for one, a one for one
                frontier.extend(a for a in current.args[:1] if isinstance(a, fx.Node))
            else:
                frontier.extend(current.all_input_nodes)
    return None


def ann_site(ann: fx.GraphModule, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ANN's pre-activation z and activation ReLU(z) at site ``name`` for input ``x``.

    Raises:
        Nothing of its own: its inputs come checked from :func:`snnconv.convert`.
    """
    site = ann.get_submodule(name)
    box: list[torch.Tensor] = []

    def grab(_module, inputs):
        box.append(inputs[0].detach())
        raise _Captured

    handle = site.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            ann(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    z = box[0]
    with torch.no_grad():
        return z, site(z)


@dataclass
class SnnProbe:
    """What one SNN run recorded at a layer (all averaged over the T steps)."""

    preactivation: torch.Tensor  # [B, ...]: mean window + offset / T
    layer_input: torch.Tensor | None  # [B, ...]: the bias layer's input, if asked for
    output: torch.Tensor | None = None  # [B, ...]: the neuron's mean output, if asked for


def snn_site(snn: SpikingNetwork, x: torch.Tensor, name: str, steps: int, seed: int, layer: nn.Module | None = None,
             output: bool = False) -> SnnProbe:
    """Simulate ``x`` for ``steps`` and record neuron ``name``'s average input (and
    ``layer``'s input, and the neuron's average output when ``output``).

    Raises:
        Nothing of its own: its inputs come checked from :func:`snnconv.convert`.
    """
    neuron = neuron_at(snn, name)
    batch = x.shape[0]
    found: dict[str, torch.Tensor] = {}

    def average(value: torch.Tensor) -> torch.Tensor:
        if value.shape[0] == batch and steps != 1:  # static (before the first spiking layer)
            return value.detach().clone()
        return value.detach().reshape(steps, batch, *value.shape[1:]).mean(0)

    def grab_layer(_module, inputs):
        found["layer"] = average(inputs[0])

    def grab_neuron(_module, inputs):
        window = inputs[0]
        z = window.detach().mean(0)
        if neuron.offset is not None:
            z = z + neuron.offset.to(z.dtype) / steps
        found["z"] = z
        if not output:
            raise _Captured

    def grab_output(_module, _inputs, out):
        found["out"] = out.detach().mean(0)
        raise _Captured

    _warm(snn, x)
    handles = [neuron.register_forward_pre_hook(grab_neuron)]
    if output:
        handles.append(neuron.register_forward_hook(grab_output))
    if layer is not None:
        handles.append(layer.register_forward_pre_hook(grab_layer))
    try:
        simulate(snn, x, steps, seed=seed, memory_budget=_NO_SPLIT, window_bytes=None)
    except _Captured:
        pass
    finally:
        for h in handles:
            h.remove()
    return SnnProbe(found["z"], found.get("layer"), found.get("out"))


def layer_errors(ann: fx.GraphModule, snn: SpikingNetwork, batches: list[torch.Tensor], steps: int,
                 seed: int = 0) -> dict[str, dict[str, float]]:
    """Every spiking layer's mean squared errors over the calibration set:
    ``{"preactivation": {layer: E[(z_ANN - z_SNN)^2]}, "output": {layer: E[(ReLU(z_ANN) - mean_t s(t))^2]}}``.

    One simulation per batch records every layer at once (no calibration in between).

    Raises:
        Nothing of its own: its inputs come checked from :func:`snnconv.convert`.
    """
    names = [n for n, _ in snn.spiking_layers()]
    sums = {kind: {n: 0.0 for n in names} for kind in ("preactivation", "output")}
    counts = {n: 0 for n in names}
    for index, x in enumerate(batches):
        snn_z: dict[str, torch.Tensor] = {}
        snn_out: dict[str, torch.Tensor] = {}
        ann_z: dict[str, torch.Tensor] = {}
        ann_out: dict[str, torch.Tensor] = {}

        def grab_snn(name):
            neuron = neuron_at(snn, name)

            def hook(_module, inputs):
                z = inputs[0].detach().mean(0)
                snn_z[name] = z + neuron.offset.to(z.dtype) / steps if neuron.offset is not None else z

            return hook

        def grab_snn_out(name):
            def hook(_module, _inputs, out):
                snn_out[name] = out.detach().mean(0)

            return hook

        def grab_ann(name):
            def hook(_module, inputs, out):
                ann_z[name], ann_out[name] = inputs[0].detach(), out.detach()

            return hook

        _warm(snn, x)
        handles = [neuron_at(snn, n).register_forward_pre_hook(grab_snn(n)) for n in names]
        handles += [neuron_at(snn, n).register_forward_hook(grab_snn_out(n)) for n in names]
        handles += [ann.get_submodule(n).register_forward_hook(grab_ann(n)) for n in names]
        try:
            with torch.no_grad():
                ann(x)
            simulate(snn, x, steps, seed=seed * 1_000_003 + index, memory_budget=_NO_SPLIT, window_bytes=None)
        finally:
            for h in handles:
                h.remove()
        for n in names:
            sums["preactivation"][n] += float(((ann_z[n] - snn_z[n]) ** 2).sum())
            sums["output"][n] += float(((ann_out[n] - snn_out[n]) ** 2).sum())
            counts[n] += ann_z[n].numel()
    return {kind: {n: values[n] / counts[n] for n in names} for kind, values in sums.items()}


TARGETS = ("output", "preactivation")


def mean_difference(ann: fx.GraphModule, snn: SpikingNetwork, batches: list[torch.Tensor], name: str, steps: int,
                    seed: int, target: str = "output") -> torch.Tensor:
    """Per-element mean over the calibration set of the ANN's minus the SNN's value at
    layer ``name``: its output ReLU(z_ANN) - mean_t s(t) (``target="output"``, the
    authors' code) or its pre-activation z_ANN - z_SNN (``"preactivation"``). ``[...]``:
    one sample's shape.

    Raises:
        Nothing of its own: its inputs come checked from :func:`snnconv.convert`.
    """
    total = None
    count = 0
    for index, x in enumerate(batches):
        z_ann, a_ann = ann_site(ann, x, name)
        probe = snn_site(snn, x, name, steps, seed * 1_000_003 + index, output=target == "output")
        diff = (a_ann - probe.output if target == "output" else z_ann - probe.preactivation).sum(0)
        total = diff if total is None else total + diff
        count += x.shape[0]
    return total / count

"""Insight into a converted network: synaptic operations, energy, layer-wise conversion error.

Counting rules (methods spec section 6, with our exact reading). Which rule an op follows
is its ``cost`` in the table of operations (:mod:`snnconv.convert.ops`), the same for
every spelling of the op (module, function, tensor method). Layers are keyed by their
graph name (``site_3``); ``CostCounter.paths``, ``summary()["layers"][name]["path"]``,
:func:`layer_paths` and ``layerwise_error(...).paths`` give the user's module path of
each (``layer3.1.relu``).

* **Spike events.** A spiking layer's output window is ``θ·s(t)``; one *event* is one
  spike unit: an IF/TPP spike is 1, a GN count of n is n, a CIF ±1 is 1
  (``neuron.spike_units(out)``). Sleep steps count like wake steps.
* **Fan-out.** An event at position e of a spiking layer costs one accumulate per
  *path* from e to a synapse-bearing consumer: the next conv/linear layer (or transposed
  conv; module or functional), reached
  through any chain of linear pass-through ops (flatten, view, reshape, cat, add,
  getitem, nearest upsampling, average pooling, constant scaling). A path through an
  average pool counts once per pool window that holds e, i.e. the pool is folded into
  the next layer's kernel (as hardware does; the NIR export does the same). With
  non-overlapping pools that is exactly the number of distinct synapses of the folded
  kernel. A spiking layer read directly by another spiking layer (an identity residual)
  or by the network output costs one accumulate per path.
  Exactly: fanout(e) = ∂/∂s_e Σ_o G(s)_o, where G is the consumer chain with every
  conv/linear weight replaced by ones (groups, stride, padding, dilation kept), every
  average pool replaced by the sum pool of the same windows, mean by sum, constant
  scales dropped, and biases removed. Padding never counts (a padded zero holds no
  spike), so border positions get the smaller fan-out they really have.
* **SOPs** of a layer at step t = Σ_e units_e(t)·fanout(e), summed over the batch.
* **MACs.** Every conv/linear node costs (output elements) × (inputs per output) MACs
  per image (the usual count, padding included); a transposed conv costs (input
  elements) × (outputs per input). ``ann_macs`` sums all of them: the
  ANN. ``input_macs`` sums those that run on the analog input before the first spiking
  layer; the drive is constant under direct coding, so the engine computes it once per
  image and we count it once (a chip that recomputes it every step pays T times it).
  Pooling additions and bias additions are not counted, in the ANN or the SNN.
* **Energy** (45 nm, Horowitz 2014): E_SNN = e_MAC·input_macs + e_AC·SOPs,
  E_ANN = e_MAC·ann_macs, with e_AC = 0.9 pJ and e_MAC = 4.6 pJ by default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import SnnconvError, check
from .evaluate.plan import plan_simulations
from .convert.ops import Op, lookup
from .inputs import check_input
from .metrics import SpikeCounter, running_average
from .network import SpikingNetwork
from .neurons import SpikingNeuron

E_AC_PJ = 0.9  # picojoules per accumulate (45 nm, Horowitz ISSCC 2014)
E_MAC_PJ = 4.6  # picojoules per multiply-accumulate


@dataclass
class CostProfile:
    """Static cost facts of a network for one input shape.

    Attributes:
        fanout: per spiking layer, fan-out of every neuron ``[*neuron_shape]`` (float64).
        ann_macs: MACs of one ANN forward pass per image (all conv/linear layers).
        input_macs: MACs on the analog input (the conv/linear layers before the first
            spiking layer), per image, computed once.
        neurons: neurons per image in each spiking layer.
    """

    fanout: dict[str, torch.Tensor]
    ann_macs: float
    input_macs: float
    neurons: dict[str, int]


class GraphProbe(fx.Interpreter):
    """Runs a converted graph on one sample for one step and keeps every node's value.

    Used by :func:`cost_profile` and the NIR export to learn every shape. Each spiking
    layer runs one step on a window ``[1, batch, ...]``; its values only fix shapes.

    Attributes:
        modules: ``dict(graph_module.named_modules())``.
        values: each node's value after :meth:`run`.
        windows: the nodes computed from a spiking layer's output.
        macs: per synaptic node (conv, transposed conv, linear; :mod:`snnconv.convert.ops`),
            its MACs per image: output elements x inputs per output (input elements x
            outputs per input for a transposed conv).

    Raises:
        SnnconvError: from :meth:`run`, only through the layers it runs (bad shapes).
    """

    def __init__(self, graph_module: fx.GraphModule) -> None:
        super().__init__(graph_module, garbage_collect_values=False)
        self.modules = dict(graph_module.named_modules())
        self.values: dict[fx.Node, object] = {}
        self.windows: set[fx.Node] = set()
        self.macs: dict[fx.Node, float] = {}

    def run_node(self, n: fx.Node):
        module = self.modules.get(n.target) if n.op == "call_module" else None
        if isinstance(module, SpikingNeuron):
            # One step of one sample: the neuron's window is [1, 1, ...]; the values
            # only fix shapes, so any neuron output of the right shape will do.
            (source,) = n.all_input_nodes
            result = module(self.env[source].unsqueeze(0)).squeeze(0)
            self.windows.add(n)
        else:
            result = super().run_node(n)
            if any(i in self.windows for i in n.all_input_nodes):
                self.windows.add(n)
        op = lookup(n, self.modules)
        if op is not None and op.cost == "synapse" and isinstance(result, torch.Tensor):
            weight = module.weight if module is not None else self._operand(n, 1, "weight")
            if isinstance(weight, torch.Tensor):
                self.macs[n] = _macs(op, self._operand(n, 0, "input"), result, weight)
        self.values[n] = result
        return result

    def _operand(self, n: fx.Node, index: int, name: str):
        """Argument ``index`` (or keyword ``name``) of node ``n``, evaluated."""
        value = n.args[index] if len(n.args) > index else n.kwargs.get(name)
        return self.env.get(value) if isinstance(value, fx.Node) else value


def _macs(op: Op, x, result: torch.Tensor, weight: torch.Tensor) -> float:
    """MACs per image of one synaptic layer (padding included): (output elements) x
    (inputs per output) = ``result[0].numel() * weight[0].numel()``; a transposed conv
    (weight ``[C_in, C_out / groups, *kernel]``) costs (input elements) x (outputs per input)."""
    if op.name.startswith("conv_transpose"):
        return float(x[0].numel() * weight[0].numel())
    return float(result[0].numel() * weight[0].numel())


def _sum_pool(x: torch.Tensor, dims: int, kernel, stride, padding, ceil_mode: bool) -> torch.Tensor:
    """Sum pooling over the same windows as average pooling (padding adds nothing)."""
    if dims == 1:
        as_pair = lambda v: (1, v[0] if isinstance(v, (tuple, list)) else v)  # noqa: E731
        stride = kernel if stride is None or stride == () or stride == [] else stride
        return F.avg_pool2d(x.unsqueeze(-2), as_pair(kernel), as_pair(stride), (0, as_pair(padding)[1]), ceil_mode,
                            True, divisor_override=1).squeeze(-2)
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    stride = kernel if stride is None or stride == () or stride == [] else stride
    return pool(x, kernel, stride, padding, ceil_mode, True, divisor_override=1)


def _adaptive_sum(x: torch.Tensor, dims: int, output_size) -> torch.Tensor:
    """Sum over the bins of adaptive average pooling: bin i of n over m inputs is
    [floor(i·m/n), ceil((i+1)·m/n)), as in PyTorch."""
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * dims
    for axis, n_out in zip(range(x.dim() - dims, x.dim()), sizes):
        m = x.shape[axis]
        n_out = m if n_out is None else int(n_out)
        bins = torch.zeros(n_out, m, dtype=x.dtype, device=x.device)
        for i in range(n_out):
            bins[i, (i * m) // n_out : -((-(i + 1) * m) // n_out)] = 1
        x = torch.movedim(torch.movedim(x, axis, -1) @ bins.T, -1, axis)
    return x


def _structural_fanout(gm: fx.GraphModule, probe: GraphProbe, source: fx.Node) -> torch.Tensor:
    """fanout(e) for every neuron e of ``source`` (see the module docstring), ``[*shape]``."""
    modules = probe.modules
    shape = probe.values[source].shape
    dtype = torch.float64
    s = torch.zeros(shape, dtype=dtype, requires_grad=True)
    reach: dict[fx.Node, torch.Tensor] = {source: s}
    total = s.new_zeros(())
    order = list(gm.graph.nodes)
    for n in order[order.index(source) + 1 :]:
        if not any(i in reach for i in n.all_input_nodes):
            continue

        def load(node: fx.Node):
            if node in reach:
                return reach[node]
            value = probe.values.get(node)
            # A branch that does not carry these spikes contributes nothing structurally.
            return torch.zeros(value.shape, dtype=dtype) if isinstance(value, torch.Tensor) else value

        args = fx.node.map_arg(n.args, load)
        kwargs = fx.node.map_arg(n.kwargs, load)
        module = modules.get(n.target) if n.op == "call_module" else None
        if n.op == "output":
            outs: list[torch.Tensor] = []
            fx.node.map_arg(n.args, lambda node: outs.append(reach[node]) if node in reach else None)
            total = total + sum(o.sum() for o in outs)  # the readout accumulates each path once
            continue
        if isinstance(module, SpikingNeuron):
            total = total + args[0].sum()  # identity synapse into the next membrane
            continue
        op = lookup(n, modules)
        if op is not None and op.cost == "synapse":
            total = total + _synapse_paths(n, op, module, args, kwargs, reach).sum()
            continue
        reach[n] = _structural_op(n, op, module, args, kwargs, reach)
    (grad,) = torch.autograd.grad(total, s, allow_unused=True) if total.requires_grad else (None,)
    fanout = torch.zeros(shape, dtype=dtype) if grad is None else grad.detach()
    return fanout[0]  # drop the batch of one


def _synapse_paths(n: fx.Node, op: Op, module, args, kwargs, reach) -> torch.Tensor:
    """A synaptic layer with every weight replaced by ones and no bias (geometry kept)."""
    dtype = torch.float64
    if module is not None:
        ones = torch.ones_like(module.weight, dtype=dtype)
        if isinstance(module, nn.Linear):
            return F.linear(args[0], ones)
        if op.name.startswith("conv_transpose"):
            transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[op.dims - 1]
            return transpose(args[0], ones, None, module.stride, module.padding, module.output_padding, module.groups,
                             module.dilation)
        return module._conv_forward(args[0], ones, None)
    x = args[0] if args else kwargs.get("input")
    w = args[1] if len(args) > 1 else kwargs.get("weight")
    if x is not reach.get(n.args[0] if n.args else n.kwargs.get("input")):
        raise SnnconvError(f"layer {n.name!r} takes spikes as its weight: no synaptic count is defined")
    rest = list(args[3:]) if n.target is not F.linear else []
    ones = torch.ones(w.shape, dtype=dtype)
    geometry = {k: v for k, v in kwargs.items() if k not in ("bias", "weight", "input")}  # stride, padding, ...
    return F.linear(x, ones) if n.target is F.linear else n.target(x, ones, None, *rest, **geometry)


def _structural_op(n: fx.Node, op: Op | None, module, args, kwargs, reach) -> torch.Tensor:
    """The 0/1 version of one linear pass-through op, by its cost rule (:mod:`snnconv.convert.ops`)."""
    rule = op.cost if op is not None else "as_is"
    reached = [a for a in args if isinstance(a, torch.Tensor) and any(a is r for r in reach.values())]
    if rule == "pass" and len(reached) == 1:
        return reached[0]  # scaling by a number, parameter or buffer carries each spike to one place
    if rule == "unsigned_sum" and reached:
        return sum(reached)  # a - b, -a: one path per reached operand, whatever the sign
    if module is not None:
        if rule == "sum_pool":
            return _sum_pool(args[0], op.dims, module.kernel_size, module.stride, module.padding, module.ceil_mode)
        if rule == "adaptive_sum":
            return _adaptive_sum(args[0], op.dims, module.output_size)
        if rule == "gate":  # counted as if every spike passed the gate: an upper bound
            return _sum_pool(args[0], module.dims, module.kernel_size, module.stride, module.padding, module.ceil_mode)
        return module(*args, **kwargs)  # flatten, identity, unflatten, nearest upsampling: already 0/1
    if n.op == "call_function":
        if rule == "sum_pool":
            names = ("kernel_size", "stride", "padding", "ceil_mode")
            values = list(args[1:5]) + [None] * (5 - len(args))
            opts = {k: kwargs.get(k, v) for k, v in zip(names, values)}
            return _sum_pool(args[0], op.dims, opts["kernel_size"], opts["stride"], opts["padding"] or 0,
                             bool(opts["ceil_mode"]))
        if rule == "adaptive_sum":
            return _adaptive_sum(args[0], op.dims, args[1] if len(args) > 1 else kwargs["output_size"])
        if rule == "mean_as_sum":
            return torch.sum(*args, **kwargs)
        return n.target(*args, **kwargs)
    if n.op == "call_method":
        self_arg, *rest = args
        if rule == "mean_as_sum":
            return self_arg.sum(*rest, **kwargs)
        return getattr(self_arg, n.target)(*rest, **kwargs)
    raise SnnconvError(f"node {n.name!r} ({n.op}) cannot be counted")


def cost_profile(snn: SpikingNetwork, example: torch.Tensor) -> CostProfile:
    """Fan-outs and MAC counts of ``snn`` for inputs shaped like ``example`` ``[batch, ...]``.

    Runs the graph once on one sample (one step) to learn every shape, then one
    structural backward pass per spiking layer. Cost: about two forward passes of one
    image per layer; done once per evaluation, not per batch. Each layer is counted by
    its rule in the table of operations (:mod:`snnconv.convert.ops`).

    Raises:
        SnnconvError: ``snn`` is not a converted network, ``example`` does not fit it, or
            a layer takes spikes as its weight (no synaptic count is defined).
    """
    check(isinstance(snn, SpikingNetwork), f"cost_profile() needs a network from snnconv.convert(), got {type(snn).__name__}")
    gm = snn.graph
    reference = next(iter(gm.buffers()), None)
    sample = check_input(gm, example, "example")[:1]
    probe = GraphProbe(gm)
    with torch.no_grad():
        probe.run(sample)
    cpu_values = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in probe.values.items()}
    probe.values = cpu_values
    fanout: dict[str, torch.Tensor] = {}
    neurons: dict[str, int] = {}
    graph_cpu = gm if reference is None or reference.device.type == "cpu" else None
    if graph_cpu is None:
        import copy

        graph_cpu = copy.deepcopy(gm).cpu()
        probe.modules = dict(graph_cpu.named_modules())
        node_map = dict(zip(gm.graph.nodes, graph_cpu.graph.nodes))
        probe.values = {node_map[k]: v for k, v in probe.values.items()}
    for n in graph_cpu.graph.nodes:
        if n.op == "call_module" and isinstance(probe.modules[n.target], SpikingNeuron):
            with torch.enable_grad():
                fanout[n.target] = _structural_fanout(graph_cpu, probe, n)
            neurons[n.target] = fanout[n.target].numel()
    ann_macs = sum(probe.macs.values())
    input_macs = sum(m for n, m in probe.macs.items() if n not in probe.windows)
    return CostProfile(fanout, float(ann_macs), float(input_macs), neurons)


class CostCounter(SpikeCounter):
    """Recorder for :func:`snnconv.simulate` counting spike events, SOPs and energy.

    ``events[name]`` and ``sops[name]`` are float64 ``[total_steps]`` summed over the
    batch (and over repeated simulations of the same length). Pass it as ``recorder=``;
    it never changes the simulation.

    Args:
        snn: the network that will be simulated.
        example: an input ``[batch, ...]`` of the shape that will be simulated.
        e_ac, e_mac: picojoules per accumulate / per multiply-accumulate.
        profile: a :func:`cost_profile` already made for this network and shape (reused
            across seeds and T instead of recomputed).

    Attributes:
        events, sops: per layer name, float64 ``[total_steps]``.
        paths: per layer name (``site_3``), the user's module path (``layer3.1.relu``).

    Raises:
        SnnconvError: a negative energy per operation, the errors of :func:`cost_profile`,
            and (in ``record``) a simulated shape other than the profiled one.
    """

    def __init__(self, snn: SpikingNetwork, example: torch.Tensor, e_ac: float = E_AC_PJ, e_mac: float = E_MAC_PJ,
                 profile: CostProfile | None = None) -> None:
        super().__init__()
        check(e_ac >= 0 and e_mac >= 0, f"energies per operation must be >= 0, got e_ac={e_ac}, e_mac={e_mac}")
        self.profile = cost_profile(snn, example) if profile is None else profile
        self.sops: dict[str, torch.Tensor] = {}
        self.paths: dict[str, str] = {}  # layer name (site_3) -> the user's module path (layer3.1.relu)
        self.e_ac, self.e_mac = float(e_ac), float(e_mac)
        self._fanout_device: dict[str, torch.Tensor] = {}

    def record(self, name: str, neuron, out: torch.Tensor) -> None:
        units = neuron.spike_units(out).flatten(2)  # [steps, batch, neurons]
        per_element = units.sum(1).double()  # [steps, neurons]: events summed over the batch
        fan = self._fanout_device.get(name)
        if fan is None:
            fan = self._fanout_device[name] = self.profile.fanout[name].flatten().to(per_element.device)
        check(fan.numel() == per_element.shape[1], f"layer {name!r} has {per_element.shape[1]} neurons but the "
              f"cost profile was made for {fan.numel()}: build the CostCounter with an input of the simulated shape")
        for store, value in ((self.events, per_element.sum(1).cpu()), (self.sops, (per_element @ fan).cpu())):
            if name in store and store[name].shape == value.shape:
                store[name] += value
            else:
                store[name] = value
        self.neurons[name] = units.shape[2]
        self.paths[name] = _path(name, neuron)
        if name == next(iter(self.events)):
            self.samples += out.shape[1]

    def total_sops(self) -> float:
        return float(sum(s.sum() for s in self.sops.values()))

    def sops_per_step(self) -> torch.Tensor:
        """SOPs of all layers at every step, float64 ``[total_steps]`` (summed over samples)."""
        return torch.stack(list(self.sops.values())).sum(0)

    def events_per_step(self) -> torch.Tensor:
        return torch.stack(list(self.events.values())).sum(0)

    def energy_pj(self, sops_per_image: float) -> float:
        """E_SNN per image for a given SOP count: e_MAC·input_macs + e_AC·SOPs."""
        return self.e_mac * self.profile.input_macs + self.e_ac * sops_per_image

    def summary(self, upto: int | None = None) -> dict:
        """Per-image costs over the first ``upto`` steps (all steps by default), as plain data.

        Keys: spike_events, sops, input_macs, ann_macs, energy_pj, ann_energy_pj,
        energy_ratio (E_SNN / E_ANN), and ``layers``: per layer name (``site_3``) its
        neurons, spike_events, firing_rate, sops and ``path``, the user's module path of
        the activation it replaced (``layer3.1.relu``).

        Raises:
            SnnconvError: nothing was recorded, or ``upto`` is not in 1..steps.
        """
        check(self.samples > 0, "nothing was recorded: pass the counter as recorder= to simulate()")
        steps = next(iter(self.events.values())).numel()
        upto = steps if upto is None else upto
        check(1 <= upto <= steps, f"upto must be in 1..{steps}, got {upto}")
        per = 1.0 / self.samples
        sops = float(self.sops_per_step()[:upto].sum()) * per
        ann = self.e_mac * self.profile.ann_macs
        layers = {
            name: {
                "neurons": self.neurons[name],
                "spike_events": float(e[:upto].sum()) * per,
                "firing_rate": float(e[:upto].sum()) * per / (self.neurons[name] * upto),
                "sops": float(self.sops[name][:upto].sum()) * per,
                "path": self.paths.get(name, name),
            }
            for name, e in self.events.items()
        }
        return {
            "steps": upto,
            "spike_events": float(self.events_per_step()[:upto].sum()) * per,
            "sops": sops,
            "input_macs": self.profile.input_macs,
            "ann_macs": self.profile.ann_macs,
            "energy_pj": self.energy_pj(sops),
            "ann_energy_pj": ann,
            "energy_ratio": self.energy_pj(sops) / ann if ann > 0 else None,
            "e_ac_pj": self.e_ac,
            "e_mac_pj": self.e_mac,
            "layers": layers,
        }


def _path(name: str, neuron: nn.Module) -> str:
    path = getattr(neuron, "path", None)
    return path if isinstance(path, str) and path else name


def layer_paths(snn: SpikingNetwork) -> dict[str, str]:
    """``{layer name: user's module path}`` for each spiking layer, in graph order.

    The layer name is the neuron's name in the converted graph (``site_3``, the key of
    counters and error tables); the path is where the activation it replaced sits in the
    source model (``layer3.1.relu``, ``features.3``, ``layer1.0.relu#2`` for a module's
    second call; see :class:`snnconv.convert.ActivationSite`). A neuron without a path
    (set by hand) is named by its layer name.

    Raises:
        SnnconvError: ``snn`` is not a network from :func:`snnconv.convert`.
    """
    check(isinstance(snn, SpikingNetwork), f"layer_paths() needs a network from snnconv.convert(), got {type(snn).__name__}")
    return {name: _path(name, neuron) for name, neuron in snn.spiking_layers()}


class LayerErrors(dict):
    """:func:`layerwise_error`'s ``{layer name: [error at each reported step]}``, plus
    ``paths``: ``{layer name: the user's module path}`` (:func:`layer_paths`)."""

    def __init__(self, errors: dict, paths: dict[str, str]) -> None:
        super().__init__(errors)
        self.paths = dict(paths)


class _AverageRecorder:
    """Keeps each spiking layer's running-average output at the requested steps."""

    def __init__(self, report_steps: list[int], wake_steps: int | None) -> None:
        self.report_steps = report_steps
        self.wake = wake_steps
        self.averages: dict[str, list[torch.Tensor]] = {}

    def record(self, name: str, neuron, out: torch.Tensor) -> None:
        avg = running_average(out.double(), self.wake)[[t - 1 for t in self.report_steps]]  # [len(steps), B, ...]
        self.averages.setdefault(name, []).append(avg.cpu())


def _relative_mse(estimate: torch.Tensor, target: torch.Tensor) -> float | None:
    """Σ(ŷ − a)² / Σa² over batch and neurons; None when the ANN layer is all zero."""
    denominator = float(target.square().sum())
    numerator = float((estimate - target).square().sum())
    if denominator == 0.0:
        return 0.0 if numerator == 0.0 else None
    return numerator / denominator


def ann_activations(model: nn.Module, snn: SpikingNetwork, x: torch.Tensor, activations=None) -> dict[str, torch.Tensor]:
    """Each spiking layer's ANN activation a_l on ``x``: the output of the source's
    QCFS / clip-floor / ReLU at that site, BN folded as in ``snn``, float64 on the CPU.

    Args:
        model: the source ANN the network was converted from.
        snn: ``convert(model, ...)``.
        x: input ``[batch, ...]``.
        activations: the ``activations=`` mapping ``snn`` was converted with, if any.

    Returns:
        ``{site name (as in snn.spiking_layers()): activation [batch, ...]}``.

    Raises:
        SnnconvError: an input that does not fit the network.
    """
    from .convert import prepare
    from .convert.activation_sites import ActivationSite

    x = check_input(snn.graph, x, "input")
    ann = prepare(model, activations, getattr(snn, "max_pool", None)).eval()
    ref = next(iter(snn.graph.parameters()), None)
    if ref is not None:
        ann.to(device=ref.device, dtype=ref.dtype)
    recorded: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, i, o, name=name: recorded.__setitem__(name, o.detach().double().cpu()))
               for name, m in ann.named_modules() if isinstance(m, ActivationSite)]
    try:
        with torch.no_grad():
            ann(x.to(device=ref.device, dtype=ref.dtype) if ref is not None else x)
    finally:
        for h in handles:
            h.remove()
    return recorded


def layerwise_error(model: nn.Module, snn: SpikingNetwork, x: torch.Tensor, steps: list[int] | int, *,
                    sleep_steps: int = 0, seed: int = 0, activations=None) -> LayerErrors:
    """Relative MSE between each ANN activation and its spiking layer's average output.

    For spiking layer l (``site_i``, whose source path is in the result's ``paths``) and each T: err_l(T) = Σ(ȳ_l(T) − a_l)² / Σ a_l²,
    where a_l is the ANN activation (the source's QCFS/clip-floor/ReLU output, BN
    folded) and ȳ_l(T) = Σ_{t<=T} out_l(t) / min(T, wake) the layer's running-average
    output, summed over the batch and neurons. None where the ANN layer is all zero and
    the SNN is not.

    Args:
        model: the source ANN the network was converted from.
        snn: ``convert(model, ...)`` (with the same calibration, if any).
        x: input ``[batch, ...]``.
        steps: the T values; with ``sleep_steps`` give one T (the wake steps) and the
            error is reported after every total step 1..T+S.
        seed: for stochastic neurons and permutation.
        activations: the ``activations=`` mapping ``snn`` was converted with, if any.

    Returns:
        ``{layer name: [error at each reported step]}`` in layer order (a
        :class:`LayerErrors`, a dict whose ``paths`` gives each layer's module path in the
        source, e.g. ``{"site_0": "features.1"}``).

    Raises:
        SnnconvError: bad ``steps`` (not integers >= 1, or several with sleep steps), an
            input that does not fit, or a model that is not the one ``snn`` came from.
    """
    from .engine import simulate

    steps = [steps] if isinstance(steps, int) else sorted(set(steps))
    check(len(steps) >= 1 and all(isinstance(t, int) and t >= 1 for t in steps), f"steps must be integers >= 1, got {steps}")
    check(sleep_steps == 0 or len(steps) == 1, "with sleep steps give one T (the wake steps)")
    x = check_input(snn.graph, x, "input")
    activations = ann_activations(model, snn, x, activations)
    layer_names = [name for name, _ in snn.spiking_layers()]
    missing = [n for n in layer_names if n not in activations]
    check(not missing, f"spiking layers {missing} have no ANN activation of that name: pass the model the network was converted from")
    # The evaluation plan's rule (one simulation at the largest T for causal neurons, one per
    # T otherwise), with this call's seed for every simulation.
    plan = plan_simulations(list(steps), sleep_steps=sleep_steps, seeds=[seed], causal=snn.causal, stochastic=True)
    report = [t for simulation in plan for t in simulation.report]
    errors: dict[str, list[float | None]] = {name: [] for name in layer_names}
    for simulation in plan:
        recorder = _AverageRecorder(list(simulation.report), steps[0] if sleep_steps else None)
        simulate(snn, x, simulation.steps, sleep_steps=sleep_steps, seed=seed, recorder=recorder)
        for name in layer_names:
            averages = torch.cat(recorder.averages[name], dim=1)  # chunks along the batch
            errors[name] += [_relative_mse(a, activations[name]) for a in averages]
    check(all(len(v) == len(report) for v in errors.values()), "internal: one error per reported step")
    return LayerErrors(errors, layer_paths(snn))

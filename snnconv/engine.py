"""The simulation engine: one time loop for every neuron, whole windows as tensors.

A value in the graph is either *static* (``[batch, ...]``: the same at every step,
computed once; everything upstream of the first spiking layer under direct coding) or a
*window* folded into the batch (``[steps * batch, ...]``). Stateless layers run once on
the folded tensor; each neuron unfolds it to ``[steps, batch, ...]`` and runs its
dynamics along time. So every layer sees its whole input window before the next one
runs (layer by layer), which is what TPP and the permutation experiment need, and the
schedule (sleep steps with biases off, permutation) is applied here, for any model.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

import torch
from torch import fx, nn
from torch.fx.node import map_arg
from torch.utils import _pytree as pytree

from .convert.activation_sites import check_batch_dims, input_dependent
from .convert.max_pool import MaxPoolGate
from .convert.ops import constant_in_sleep, lookup
from .convert.trace import check_global_hooks
from .errors import SnnconvError, check
from .functional import check_threshold
from .inputs import check_input
from .neurons import SpikingNeuron

if TYPE_CHECKING:  # the network module imports this one (SpikingNetwork.forward is simulate)
    from .network import SpikingNetwork

PERMUTE_MODES = ("per-neuron", "per-layer")


@dataclass
class SimulationCache:
    """What the engine remembers about one network between simulations (declared on
    :class:`snnconv.SpikingNetwork` as ``simulation_cache``).

    checked_versions: ``(id, version)`` of every floating parameter and buffer at the last
        finite-weights scan; the scan is skipped while they are unchanged. ``None``: scan
        again (set by code that changes parameters without bumping versions).
    activation_sizes: elements per sample of the largest value in the graph, keyed by
        (sample shape, dtype, device).
    """

    checked_versions: tuple | None = None
    activation_sizes: dict[tuple, int] = field(default_factory=dict)


def _is_network(snn: object) -> bool:
    """A network from :func:`snnconv.convert` (a :class:`SpikingNetwork`), recognised by
    what the engine uses, so the engine needs no import of the network module."""
    return (isinstance(snn, nn.Module) and isinstance(getattr(snn, "graph", None), fx.GraphModule)
            and isinstance(getattr(snn, "simulation_cache", None), SimulationCache))

DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes of activations per chunk (2 GiB)
# On CPU a chunk whose largest window fits in the last-level cache runs faster than one
# big window: each neuron's T-step loop and the next layer then read data still in
# cache. On a 32 MiB L3, 8 MiB for the largest window was best or tied for vgg6 and
# resnet20 in 4 of 6 (network, T) cases (4 or 16 MiB in the other two, by 0.07 and 0.11
# x T·ANN), while one chunk of 64 samples cost up to 1.7x the best
# (bench/results/chunking.md). GPUs want big batches: no such limit there.
CPU_WINDOW_BYTES = 8 << 20
# Live copies of the largest activation window at once: input window, the neuron's
# scaled drive and its output, plus the next layer's output. Neurons integrate
# float16/bfloat16 in float32, so a copy costs at least 4 bytes per element.
_LIVE_COPIES = 4
# Permutation adds the shuffled copy of the window (at most 8 bytes per element) and,
# per-neuron, one float32 uniform per element; per-layer's index is T x batch, expanded
# without memory: at most 12 bytes per element (kept as the bound for both).
_PERMUTE_BYTES = 12


@dataclass(frozen=True)
class Schedule:
    """How a window is driven: ``steps`` wake steps with input and biases, then
    ``sleep_steps`` with zero input and biases off; optional temporal permutation."""

    steps: int
    sleep_steps: int = 0
    permute: str | None = None

    @property
    def total(self) -> int:
        return self.steps + self.sleep_steps


def permute_window(window: torch.Tensor, mode: str, generator: torch.Generator | None) -> torch.Tensor:
    """Shuffle a window ``[T, batch, ...]`` in time, redrawn for every sample.

    ``per-neuron``: an independent, uniformly random permutation of the T steps for every
    element (a Fisher-Yates shuffle vectorised over the elements: for i = T-1 .. 1 swap
    step i with step j, j = min(floor((i + 1)·u), i) from one float32 uniform u per
    element and swap, so P(j) is 1 / (i + 1) to within float32's 2^-24 lattice and one
    rounding step, below 2^-21); ``per-layer``: one uniformly random
    permutation per sample (argsort of T uniform keys) shared by all its neurons. Either
    way each neuron's spike count is unchanged. Temporal misalignment: Bojković, Wu, Gu,
    ICML 2025.

    Why Fisher-Yates and not an argsort of per-element keys (the first implementation):
    on cache-sized windows the sort cost 3x (T = 2, 8) to 6.5x (T = 64) the shuffle's CPU
    time, and it made a permuted simulation 4.8x IF's time, now 2.3x
    (bench/results/permutation.md).

    Args:
        window: ``[T, batch, ...]`` values of any dtype; not modified.

    Returns:
        The shuffled window, same shape and dtype.
    """
    steps, batch = window.shape[:2]
    if mode == "per-layer":
        order = torch.rand((steps, batch), generator=generator, device=window.device).argsort(dim=0)
        return window.gather(0, order.reshape(steps, batch, *([1] * (window.dim() - 2))).expand_as(window))
    out = window.clone(memory_format=torch.contiguous_format)
    flat = out.view(steps, -1)
    uniform = torch.rand((max(steps - 1, 0), flat.shape[1]), generator=generator, device=window.device)
    for i in range(steps - 1, 0, -1):  # a loop over time, not over neurons
        j = uniform[i - 1].mul_(i + 1).long().clamp_(max=i).unsqueeze(0)  # the clamp: (i + 1)·u may round up to i + 1
        held = flat[i].clone()
        flat[i] = flat.gather(0, j)[0]
        flat.scatter_(0, j, held.unsqueeze(0))
    return out


class BatchSize(int):
    """The batch size read off a data tensor in ``forward`` (``x.shape[0]``, ``x.size(0)``),
    or an integer multiple of it (``n * 2``; ``convert`` refuses a fraction, ``n // 2``).

    Its value is a count of samples. User code that reshapes with it
    (``h.reshape(n, -1)``) means "per sample": the engine multiplies it by the steps
    where it meets a window (whose batch is ``steps * batch``), so folding time into the
    batch is invisible to forward().
    """

    def __mul__(self, other):
        result = int(self) * other
        return BatchSize(result) if isinstance(other, int) and not isinstance(other, bool) else result

    __rmul__ = __mul__


def _plain(value):
    """fx's immutable containers as the plain list / dict the model returned."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_plain(v) for v in value)
    return value


def _is_size_read(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target == "size") or (
        node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] == "shape"
    )


def _mark_batch(value, dim_arg, batch: int, rank: int | None = None):
    """Tag the batch entry of a size read (a ``torch.Size`` or one int) as
    :class:`BatchSize` of value ``batch``, the ANN's size of that dim 0 (also when read
    off a folded window; batch x k when tokens were merged into dim 0);
    ``x.size(-4)`` of a rank-4 ``x`` is dim 0 too."""
    if isinstance(value, tuple) and dim_arg is None:
        return (BatchSize(batch), *value[1:]) if len(value) else value
    if isinstance(dim_arg, int) and not isinstance(dim_arg, bool) and dim_arg < 0 and rank is not None:
        dim_arg += rank
    if isinstance(value, int) and not isinstance(value, bool) and dim_arg in (0,):
        return BatchSize(batch)
    return value


class _WindowRunner(fx.Interpreter):
    """Runs a converted graph once over a whole window (see the module docstring).

    Only values computed from the input carry the (time-folded) batch; parameters,
    buffers, ``get_attr`` nodes and tensors built without the input are used as they
    are, never repeated over time.
    """

    def __init__(self, graph_module, schedule: Schedule, batch: int, generator, recorder) -> None:
        super().__init__(graph_module, garbage_collect_values=True)
        self.extra_traceback = False  # fx would append multi-line node dumps to our one-line errors
        self.schedule = schedule
        self.batch = batch
        self.generator = generator
        self.recorder = recorder
        self.windows: set[fx.Node] = set()
        self.last_active_step = -1  # last step at which any neuron emitted a spike (if tracked)
        self.track_activity = False
        self.modules = dict(graph_module.named_modules())
        self.dynamic = input_dependent(graph_module.graph)
        self.output_windows = None  # the output's structure, True at each window leaf (set by the output node)

    def _as_window(self, value: torch.Tensor) -> torch.Tensor:
        """Static ``[B, ...]`` -> window ``[total, B, ...]``: the value in wake steps, 0 in sleep.

        Static values are linear in (input, biases), so zero input with biases off is 0.
        """
        s = self.schedule
        window = value.unsqueeze(0).expand(s.steps, *value.shape)
        if s.sleep_steps:
            window = torch.cat([window, value.new_zeros((s.sleep_steps, *value.shape))])
        return window

    def _fold(self, window: torch.Tensor) -> torch.Tensor:
        return window.reshape(-1, *window.shape[2:])

    def _unfold(self, folded: torch.Tensor, node: fx.Node | None = None) -> torch.Tensor:
        expected = self.schedule.total * self.batch
        if node is not None and (folded.dim() == 0 or folded.shape[0] != expected):
            rows = folded.shape[0] if folded.dim() else "no"
            raise SnnconvError(
                f"layer {node.name!r} returns {rows} rows along dim 0 where the batch has {expected} "
                f"({self.schedule.total} steps x {self.batch} samples): a layer before it selects, moves or merges dim 0 "
                "(the batch, which carries time in the SNN): index, reshape or reduce only dims >= 1, and read the batch size "
                "off the input (n = x.shape[0]) instead of writing it as a number"
                + (" (or, if tokens or positions were merged into dim 0 by h.reshape(-1, C), keep them in their own dim: "
                   "nn.Linear acts on the last dim of [B, N, C])" if isinstance(rows, int) and rows % expected == 0 else ""))
        return folded.reshape(self.schedule.total, self.batch, *folded.shape[1:])

    def _batch_sizes(self, value, factor: float):
        """Scale every :class:`BatchSize` in ``value`` (args of one node) by ``factor``:
        the steps where it meets a window, ``1 / batch`` for one all-zero sample."""
        return pytree.tree_map(lambda v: int(v * factor) if isinstance(v, BatchSize) else v, value)

    def run_node(self, n: fx.Node):
        if n.op in ("placeholder", "get_attr"):
            return super().run_node(n)
        with self._set_current_node(n):
            if n.op == "output":
                self.output_windows = _plain(map_arg(
                    n.args[0], lambda node: node in self.dynamic and isinstance(self.env[node], torch.Tensor)))
                return _plain(map_arg(n.args[0], self._output_leaf))
            has_window = n in self.dynamic and any(i in self.windows for i in n.all_input_nodes)  # not h.dtype
            if n.op == "call_module" and isinstance(self.modules[n.target], SpikingNeuron):
                return self._run_neuron(n)
            if has_window and n.op == "call_module" and isinstance(self.modules[n.target], MaxPoolGate):
                (source,) = n.all_input_nodes  # reads the whole window: the gate follows running counts
                self.windows.add(n)
                return self._fold(self.modules[n.target].window(self._unfold(self.env[source])))

            def load(node: fx.Node):
                value = self.env[node]
                if has_window and node not in self.windows and node in self.dynamic and isinstance(value, torch.Tensor):
                    return self._fold(self._as_window(value))
                return value

            args, kwargs = map_arg(n.args, load), map_arg(n.kwargs, load)
            if n in self.dynamic:  # a negative dim that resolves to the batch (the converter saw no rank)
                first = next((v for v in pytree.tree_leaves(args) if isinstance(v, torch.Tensor)), None)
                if first is not None:
                    check_batch_dims(n, first, window=has_window)
            # the batch of a window is steps * batch, in tensor ops; size arithmetic
            # (x.shape[0], n * 4) keeps counting samples, so sleep's one-sample rerun scales it too
            if has_window and any(isinstance(self.env[i], torch.Tensor) for i in n.all_input_nodes):
                self._refuse_batch_size_as_number(n, args, kwargs)
                args = self._batch_sizes(args, self.schedule.total)
                kwargs = self._batch_sizes(kwargs, self.schedule.total)
            try:
                result = getattr(self, n.op)(n.target, args, kwargs)
            except (RuntimeError, IndexError) as err:  # IndexError: a size read off a dim the input lacks (x.shape[2])
                raise SnnconvError(f"layer {n.name!r} failed on its input ({err}); check the input shape") from err
            if _is_size_read(n) and n.all_input_nodes and n.all_input_nodes[0] in self.dynamic:
                dim = args[1] if len(args) > 1 and n.op == "call_method" else kwargs.get("dim")
                source = args[0] if isinstance(args[0], torch.Tensor) else None
                # the ANN's size of dim 0: the batch, or batch x k when tokens were merged into it (h.reshape(-1, C))
                rows = self.batch if source is None or not source.dim() else \
                    source.shape[0] // (self.schedule.total if has_window else 1)
                result = _mark_batch(result, dim, rows, source.dim() if source is not None else None)
            if n in self.dynamic and isinstance(result, torch.Tensor):
                self._refuse_merged_samples(n, result, self.schedule.total * self.batch if has_window else self.batch)
            if has_window:
                self.windows.add(n)
                if self.schedule.sleep_steps and isinstance(result, torch.Tensor):
                    result = self._constants_off_in_sleep(n, result)
            return result

    def _refuse_merged_samples(self, n: fx.Node, result: torch.Tensor, samples: int) -> None:
        """Each sample (each step of each sample, in a window) must keep whole rows of dim 0:
        a reshape that merges samples (``h.view(1, -1)``, ``h.reshape(-1, 2 * C)`` of
        ``[B, C]``) lets a later op over dims >= 1 mix them, which in the SNN mixes steps
        too and depends on how simulate() chunks the batch.

        Raises:
            SnnconvError: ``result`` has a number of rows that is not a multiple of ``samples``.
        """
        rows = result.shape[0] if result.dim() else 1
        if samples > 1 and rows % samples:
            raise SnnconvError(
                f"layer {n.name!r} returns {rows} rows along dim 0 from {samples} samples (steps x batch): it merges "
                "samples (a reshape such as h.view(1, -1)), so later layers would mix them: keep dim 0 per sample "
                "(h.reshape(n, ...) with n = x.shape[0], or h.flatten(1))")

    def _refuse_batch_size_as_number(self, n: fx.Node, args, kwargs) -> None:
        """A batch size is a shape (``h.reshape(n, -1)``), which the engine scales by the
        steps; as an operand of arithmetic with a window (``p / p.size(-1)`` of a ``[B]``
        value, which the converter took for a size of a sample dim) it would be steps x B
        in the SNN and B in the ANN.

        Raises:
            SnnconvError: ``n`` multiplies, divides, adds or subtracts a batch size.
        """
        op = lookup(n, self.modules)
        if op is None or not (op.kind == "scale" or op.name in ("add", "sub")):
            return
        if any(isinstance(v, BatchSize) for v in pytree.tree_leaves((args, kwargs))):
            raise SnnconvError(
                f"layer {n.name!r} uses the batch size (a size of dim 0) as a number: with time folded into the batch "
                "it differs between the ANN and the SNN; use sizes of dims >= 1 only (h.shape[-1] of a value with one "
                "number per sample is its batch size)")

    def _adds_constant(self, n: fx.Node) -> bool:
        """The sleep rule of the table of operations; and a node that is a window only
        through a size read (``self.token.expand(h.shape[0], -1, -1)``: no input-dependent
        tensor in, a constant out, repeated over the window) is a constant drive too."""
        if constant_in_sleep(n, self.modules):
            return True
        return not any(i in self.dynamic and any(isinstance(v, torch.Tensor) for v in pytree.tree_leaves(self.env.get(i)))
                       for i in n.all_input_nodes)  # a chunk's list of windows is input-dependent too

    def _constants_off_in_sleep(self, n: fx.Node, folded: torch.Tensor) -> torch.Tensor:
        """Wake-sleep: in sleep steps every constant drive is off: biases of any layer,
        added scalars or tensors, BatchNorm shifts. Every layer between neurons is affine
        in its windowed inputs, f(s) = A s + c, so the sleep output is f(s) - f(0), where
        f(0) is the node evaluated on one all-zero sample (parameters as they are)."""
        if not self._adds_constant(n):
            return folded

        def zero(node: fx.Node):
            value = self.env[node]
            if node in self.dynamic and isinstance(value, torch.Tensor):
                return value.new_zeros((1, *value.shape[1:]))
            return value

        args = self._batch_sizes(map_arg(n.args, zero), 1 / self.batch)
        kwargs = self._batch_sizes(map_arg(n.kwargs, zero), 1 / self.batch)
        constant = getattr(self, n.op)(n.target, args, kwargs)
        if not isinstance(constant, torch.Tensor) or not constant.any():
            return folded
        storage = folded.untyped_storage().data_ptr()
        if any(isinstance(self.env.get(i), torch.Tensor) and self.env[i].untyped_storage().data_ptr() == storage
               for i in n.all_input_nodes):
            folded = folded.clone()  # never write into a value another node still holds
        # rows are step-major, steps x (batch x k) when a reshape merged k positions per
        # sample into dim 0 (h.reshape(-1, C)): sleep rows are the last sleep_steps x B x k
        total = self.schedule.total
        window = folded.reshape(total, -1, *folded.shape[1:]) if folded.dim() and folded.shape[0] % total == 0 \
            else self._unfold(folded, n)
        window[self.schedule.steps :] -= constant
        return folded

    def _output_leaf(self, node: fx.Node):
        """One leaf of the model's output: a window ``[total, batch, ...]`` if it depends
        on the input; a parameter, buffer or constant as it is."""
        value = self.env[node]
        if not isinstance(value, torch.Tensor) or node not in self.dynamic:
            return value
        return self._unfold(value, node) if node in self.windows else self._as_window(value)

    def _run_neuron(self, n: fx.Node) -> torch.Tensor:
        neuron: SpikingNeuron = self.modules[n.target]
        (source,) = n.all_input_nodes
        value = self.env[source]
        owned = source in self.windows and self._owned(source, value)
        window = self._unfold(value, source) if source in self.windows else self._as_window(value)
        wake = self.schedule.steps if self.schedule.sleep_steps else None
        # simulate() validated the input and the parameters, so the window is finite:
        # no per-window scan (validate=False), unlike direct calls.
        out = neuron(window, wake_steps=wake, generator=self.generator, inplace=owned, validate=False)
        if self.schedule.permute is not None:
            out = permute_window(out, self.schedule.permute, self.generator)
        if self.recorder is not None:
            self.recorder.record(n.target, neuron, out)
        if self.track_activity:  # one host sync per layer, only when asked for
            active = torch.nonzero(out.flatten(1).abs().amax(1)).flatten()
            if active.numel():
                self.last_active_step = max(self.last_active_step, int(active[-1]))
        self.windows.add(n)
        return self._fold(out)

    def _owned(self, node: fx.Node, value: torch.Tensor) -> bool:
        """May the neuron overwrite this window? Only if this neuron is its one reader
        and no other live value shares its memory (an identity or view node passes the
        same storage on), so reusing it as the neuron's buffer saves a window-sized
        allocation and a pass over memory without changing what anyone else sees."""
        if len(node.users) != 1 or not value.is_contiguous():
            return False
        storage = value.untyped_storage().data_ptr()
        return not any(
            other is not node and isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() == storage
            for other, v in self.env.items()
        )

    def output_window(self, result):
        """The model's output, already as windows (a tensor or the model's own structure)."""
        return result


def _integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SnnconvError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_input(snn: nn.Module, x: torch.Tensor, steps, sleep_steps, permute: str | None, seed, memory_budget) -> tuple[int, int, int, int]:
    """Validate simulate()'s arguments; return (steps, sleep_steps, seed, memory_budget) as ints."""
    if not _is_network(snn):
        raise SnnconvError(f"simulate() needs a network from snnconv.convert(), got {type(snn).__name__}")
    check_input(snn.graph, x, "input")
    steps = _integer(steps, "T (steps)")
    sleep_steps = _integer(sleep_steps, "sleep_steps")
    seed = _integer(seed, "seed")
    memory_budget = _integer(memory_budget, "memory_budget (bytes)")
    check(steps >= 1, f"T must be >= 1, got {steps}")
    check(sleep_steps >= 0, f"sleep_steps must be >= 0, got {sleep_steps}")
    check(-(1 << 63) <= seed < (1 << 64), f"seed must fit in 64 bits, got {seed}")
    check(memory_budget > 0, f"memory_budget must be a positive byte count, got {memory_budget}")
    check(permute is None or permute in PERMUTE_MODES, f"permute must be one of {', '.join(PERMUTE_MODES)} or None, got {permute!r}")
    check(not (permute and sleep_steps), "permutation and sleep steps do not combine: use one or the other")
    check_global_hooks("simulate")
    check(sleep_steps == 0 or snn.sleeps, f"sleep steps need neurons that sleep (cif); {snn.neuron!r} does not")
    return steps, sleep_steps, seed, memory_budget


def _check_network(snn: SpikingNetwork) -> None:
    """Refuse NaN/inf weights and bad thresholds, once per simulation and only when changed.

    With a finite input and finite weights every window inside is finite, which is why
    the engine does not scan each window again (see ``SpikingNeuron.forward``,
    ``validate``). The scan is skipped when no parameter changed since the last one
    (tensor versions are bumped by every in-place write), and uses ``aminmax``, which
    allocates nothing the size of a weight.
    """
    named = [(n, t) for n, t in list(snn.graph.named_parameters()) + list(snn.graph.named_buffers()) if t.is_floating_point()]
    versions = tuple((id(t), t._version) for _, t in named)
    if snn.simulation_cache.checked_versions == versions:
        return
    for name, tensor in named:
        if tensor.numel() and not all(math.isfinite(float(v)) for v in torch.aminmax(tensor.detach())):
            raise SnnconvError(f"the network's {name!r} contains NaN or inf: check the source model's weights")
    for _, neuron in snn.spiking_layers():
        check_threshold(neuron.threshold)  # raises with the message naming the fix
    snn.simulation_cache.checked_versions = versions


def _largest_activation(snn: SpikingNetwork, sample: torch.Tensor) -> int:
    """Elements per sample of the largest value in the graph, probed once per input shape.

    The probe runs the graph on one sample for one step; the answer is cached on the
    network (keyed by shape and dtype), so later calls pay nothing.
    """
    key = (tuple(sample.shape[1:]), sample.dtype, sample.device)
    cache = snn.simulation_cache.activation_sizes
    if key not in cache:
        sizes = [sample[:1].numel()]

        def note(_m, _i, out):
            if isinstance(out, torch.Tensor):
                sizes.append(out.numel())

        handles = [m.register_forward_hook(note) for m in snn.graph.modules() if m is not snn.graph]
        try:
            runner = _WindowRunner(snn.graph, Schedule(1), 1, None, None)
            with torch.no_grad():
                runner.run(sample[:1])
        finally:
            for h in handles:
                h.remove()
        cache[key] = max(sizes)
    return cache[key]


def bytes_per_sample(snn: SpikingNetwork, x: torch.Tensor, total_steps: int, permute: str | None = None) -> int:
    """Estimated peak bytes of activation windows per sample over ``total_steps`` steps.

    The largest layer output (probed once per input shape) times the live copies of a
    window, at least float32 wide since half precision is integrated in float32.

    Raises:
        SnnconvError: the one-sample probe of the graph fails on ``x``'s shape (as :func:`simulate`).
    """
    per_element = _LIVE_COPIES * max(4, x.element_size()) + (_PERMUTE_BYTES if permute else 0)
    return _largest_activation(snn, x) * total_steps * per_element


def _chunk_size(snn: SpikingNetwork, x: torch.Tensor, total: int, permute: str | None, memory_budget: int,
                window_bytes: int | None) -> int:
    """Samples per chunk: the live windows stay under ``memory_budget`` bytes and, when
    ``window_bytes`` is set, the largest window under it too (at least one sample)."""
    per_sample = bytes_per_sample(snn, x, total, permute)
    if per_sample > memory_budget:
        raise SnnconvError(
            f"one sample needs about {per_sample} bytes of activations over {total} steps, more than "
            f"memory_budget = {memory_budget}: lower T or raise memory_budget"
        )
    chunk = memory_budget // per_sample
    if window_bytes is not None:
        window_per_sample = _largest_activation(snn, x) * total * max(4, x.element_size())
        chunk = min(chunk, max(1, window_bytes // window_per_sample))
    return chunk


def _window_bytes(window_bytes, device: torch.device) -> int | None:
    """Resolve simulate()'s ``window_bytes``: ``"auto"`` is cache-sized on CPU, unlimited elsewhere."""
    if isinstance(window_bytes, str) and window_bytes == "auto":
        return CPU_WINDOW_BYTES if device.type == "cpu" else None
    if window_bytes is None:
        return None
    window_bytes = _integer(window_bytes, "window_bytes")
    check(window_bytes > 0, f"window_bytes must be a positive byte count, 'auto' or None, got {window_bytes}")
    return window_bytes


def simulate(
    snn: SpikingNetwork,
    x: torch.Tensor,
    steps: int,
    *,
    sleep_steps: int = 0,
    permute: str | None = None,
    seed: int = 0,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    window_bytes: int | str | None = "auto",
    recorder=None,
    stop_when_quiet: bool = False,
) -> torch.Tensor | tuple | list | dict:
    """Simulate a converted network on a constant (direct-coded) input.

    The analog input drives the first layer at every wake step; the layers before the
    first spiking layer run once on it. Every neuron sees its whole input window.
    Wake-sleep (CIF): after ``steps`` wake steps, ``sleep_steps`` steps with zero input
    and every constant drive off (biases of any layer, added constants, BatchNorm
    shifts); the network output keeps accumulating.

    Args:
        snn: a network from :func:`snnconv.convert`.
        x: input ``[batch, ...]`` (moved to the network's device and dtype).
        steps: T, the number of (wake) steps, >= 1.
        sleep_steps: S, extra sleep steps (CIF only).
        permute: ``"per-neuron"`` / ``"per-layer"`` shuffles each spiking layer's output
            in time (defaults to the network's own setting).
        seed: seeds every random draw (TPP spikes, permutations): same seed, same spikes
            on the same device and chunking.
        memory_budget: bytes of activation windows per chunk (estimated by
            :func:`bytes_per_sample`); larger batches are split, and a T for which one
            sample alone needs more is refused with an error rather than run.
        window_bytes: also split batches so that the largest activation window of a chunk
            stays under this many bytes (at least one sample per chunk). ``"auto"``:
            ``CPU_WINDOW_BYTES`` (8 MiB, cache-sized) on CPU, no limit on other devices;
            ``None``: no limit. Deterministic neurons give the same outputs whatever the
            chunking; TPP and permutation draw per chunk (same seed, same chunks, same spikes).
        recorder: optional object with ``record(name, neuron, out_window)`` (counters).
        stop_when_quiet: wake-sleep only: drop the sleep steps after the last step at
            which any neuron of the network spiked. From then on every neuron has zero
            input and no bias, so nothing can change and the readout stays fixed; the
            returned window is ``[steps + used_sleep_steps, ...]`` (the steps actually
            needed). The simulation itself still runs all ``sleep_steps``: each layer
            sees its whole window before the next one runs.

    Returns:
        The network output at every step, ``[steps + sleep_steps, batch, ...]``, not
        averaged (see :func:`snnconv.metrics.running_average`). A model that returns
        several outputs (a tuple, list or dict of heads) gets the same structure back,
        each tensor leaf that depends on the input as ``[steps + sleep_steps, batch, ...]``
        (parameters, buffers or constants returned by the model come back as they are).

    Raises:
        SnnconvError: ``snn`` is not a converted network; the input has the wrong shape,
            dtype or non-finite values; T, sleep steps, seed, memory budget or window bytes
            are not valid integers in range; permutation combined with sleep steps, or
            sleep steps for neurons that do not sleep; a global module hook installed; NaN/inf weights or bad thresholds;
            ``stop_when_quiet`` without sleep steps; or one sample needs more than
            ``memory_budget`` bytes at this T.
    """
    permute = snn.permute if permute is None and _is_network(snn) else permute
    steps, sleep_steps, seed, memory_budget = _check_input(snn, x, steps, sleep_steps, permute, seed, memory_budget)
    _check_network(snn)
    reference = next(iter(snn.graph.buffers()), None)
    if reference is not None:
        x = x.to(device=reference.device, dtype=next((p.dtype for p in snn.graph.parameters()), reference.dtype))
    schedule = Schedule(steps, sleep_steps, permute)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    window_bytes = _window_bytes(window_bytes, x.device)
    chunk = min(x.shape[0], _chunk_size(snn, x, schedule.total, permute, memory_budget, window_bytes))
    check(not stop_when_quiet or sleep_steps > 0, "stop_when_quiet needs sleep steps (wake-sleep conversion)")
    outputs = []
    last_active = -1
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk]
            runner = _WindowRunner(snn.graph, schedule, part.shape[0], generator, recorder)
            runner.track_activity = stop_when_quiet
            outputs.append(runner.output_window(runner.run(part)))
            last_active = max(last_active, runner.last_active_step)
    if isinstance(outputs[0], torch.Tensor):
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return out[: max(steps, last_active + 1)] if stop_when_quiet else out
    windows = runner.output_windows  # True at each leaf that is a window
    out = pytree.tree_map(lambda window, *parts: _join(window is True, parts), windows, *outputs)
    if stop_when_quiet:
        used = max(steps, last_active + 1)
        out = pytree.tree_map(lambda window, v: v[:used] if window is True else v, windows, out)
    return out


def _join(window: bool, parts: tuple) -> object:
    """Chunks of one output leaf: windows joined along the batch; anything else (a
    parameter, buffer, constant or number) is the same in every chunk, so the first."""
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)) if window else parts[0]

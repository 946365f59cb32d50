"""The converted network: a graph of stateless layers and spiking neurons."""
from __future__ import annotations

import torch
from torch import fx, nn

from .engine import PERMUTE_MODES, SimulationCache, simulate
from .errors import SnnconvError
from .neurons import SpikingNeuron

__all__ = ["PERMUTE_MODES", "SpikingNetwork"]


class SpikingNetwork(nn.Module):
    """A converted SNN. ``snn(x, T, ...)`` is :func:`snnconv.simulate`.

    Attributes:
        graph: the ``torch.fx.GraphModule`` (stateless layers + neuron modules).
        neuron: the neuron name it was converted with; ``neuron_options`` its options.
        permute: default temporal permutation mode (None, "per-neuron", "per-layer").
        simulation_cache: what the engine remembers between simulations (the last
            finite-weights scan, activation sizes per input shape); see
            :class:`snnconv.engine.SimulationCache`.

    Raises:
        SnnconvError: ``permute`` is not None or one of :data:`PERMUTE_MODES`.
    """

    def __init__(self, graph: fx.GraphModule, neuron: str, neuron_options: dict, permute: str | None = None) -> None:
        super().__init__()
        if permute is not None and permute not in PERMUTE_MODES:
            raise SnnconvError(f"permute must be one of {', '.join(PERMUTE_MODES)} or None, got {permute!r}")
        self.graph = graph
        self.neuron = neuron
        self.neuron_options = neuron_options
        self.permute = permute
        self.simulation_cache = SimulationCache()

    def forget_checks(self) -> None:
        """Make the next simulation scan the weights again (after parameters were changed
        in a way that does not bump tensor versions, e.g. ``.data`` writes)."""
        self.simulation_cache.checked_versions = None

    def spiking_layers(self) -> list[tuple[str, SpikingNeuron]]:
        """(name, neuron module) for each spiking layer, in graph order."""
        return [(n, m) for n, m in self.graph.named_modules() if isinstance(m, SpikingNeuron)]

    @property
    def causal(self) -> bool:
        """One simulation of T steps also gives every shorter T (no permutation, causal neurons)."""
        return self.permute is None and all(m.causal for _, m in self.spiking_layers())

    @property
    def sleeps(self) -> bool:
        return any(m.sleeps for _, m in self.spiking_layers())

    @property
    def stochastic(self) -> bool:
        return self.permute is not None or any(m.stochastic for _, m in self.spiking_layers())

    def latency_steps(self, steps: int, sleep_steps: int = 0) -> int:
        """Simulated steps before the output at ``steps`` is available.

        Causal neurons: T (+ sleep steps). Window neurons (TPP, permutation) must see a
        layer's whole input window before firing, so each spiking layer adds T:
        (number of spiking layers + 1) * T.
        """
        if self.permute is None and all(m.causal for _, m in self.spiking_layers()):
            return steps + sleep_steps
        return (len(self.spiking_layers()) + 1) * steps + sleep_steps

    def forward(self, x: torch.Tensor, steps: int, **options) -> torch.Tensor:
        """:func:`snnconv.simulate` of this network on ``x`` for ``steps`` steps.

        Raises:
            SnnconvError: as :func:`snnconv.simulate` (bad input, steps or options).
        """
        return simulate(self, x, steps, **options)

    def __repr__(self) -> str:
        """The network in execution order, one line per operation, each named where it sits
        in the source model: modules by their path, neurons by the path of the activation
        they replaced (their graph name, the key of counters and error tables, after it),
        functions and tensor methods by name.

        Raises:
            Nothing.
        """
        modules = dict(self.graph.named_modules())
        rows: list[tuple[str, str]] = []
        for node in self.graph.graph.nodes:
            if node.op == "call_module":
                module = modules[node.target]
                path = getattr(module, "path", None)
                where = f"{path}  ({node.target})" if isinstance(module, SpikingNeuron) and path else str(node.target)
                rows.append((where, repr(module).replace("\n", "\n    ")))
            elif node.op in ("call_function", "call_method"):
                rows.append((node.name, getattr(node.target, "__name__", str(node.target))))
        width = max((len(where) for where, _ in rows), default=0)
        body = "".join(f"\n  {where.ljust(width)}  {what}" for where, what in rows)
        options = ", ".join(f"{k}={v!r}" for k, v in self.neuron_options.items())
        head = f"SpikingNetwork(neuron={self.neuron!r}" + (f", {options}" if options else "") + (f", permute={self.permute!r}" if self.permute else "")
        return f"{head}, {len(self.spiking_layers())} spiking layers:{body}\n)"

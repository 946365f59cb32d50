"""Run planned simulations: convert a method, simulate in batches (sharded), read out, record.

A *readout* turns each batch's output window into a partial result and the partials of
all batches into one value per reported step (:mod:`.classification`, :mod:`.detection`,
:mod:`.regression`). The runner owns everything else, once for every task:

* batches of ``batch_size`` images; batch b of a simulation with seed s uses the engine
  seed ``s * 1_000_003 + b``, so a batch's numbers do not depend on who simulates it;
* under ``torchrun`` every rank simulates batches ``rank, rank + W, ...``
  (:func:`snnconv.distributed.shard_indices`), the ranks' partials are gathered and
  combined in batch order and their counters summed, so the numbers equal one process;
* ``stop_when_quiet`` (wake-sleep): the engine drops the sleep steps after the last one
  at which a neuron could change; the missing steps would output zero, so each batch is
  padded with zeros to T + S, and the report is cut at the last step any batch used;
* recorders: one counter per simulation, returned with it (:class:`SimulationResult`).
"""
from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from .. import distributed
from ..engine import DEFAULT_MEMORY_BUDGET, simulate
from ..errors import check
from ..metrics import SpikeCounter
from ..network import SpikingNetwork
from .plan import PlannedSimulation, RunSpec, plan_simulations


class Readout(Protocol):
    """What the runner needs from a task's readout."""

    def read(self, out: torch.Tensor, part: slice, report: Sequence[int]) -> Any:
        """A partial result from one batch's output ``[T + S, batch, ...]`` (``part``: its
        images), at the 1-based total steps ``report``; picklable (it may cross ranks)."""

    def combine(self, partials: list[Any], report: Sequence[int]) -> list[Any]:
        """The partials of every batch, in batch order -> one value per step of ``report``."""


RecorderFactory = Callable[[SpikingNetwork], SpikeCounter]


@dataclass
class SimulationResult:
    """One planned simulation, done.

    Attributes:
        planned: what was simulated (seed, T, S, the steps planned for the report).
        network: the converted network that was simulated.
        report: the steps read out: ``planned.report``, cut at ``steps_used`` when a
            wake-sleep run stopped when quiet.
        values: the readout's value at each step of ``report``.
        counter: the simulation's recorder (spike events; SOPs for a CostCounter),
            summed over batches and ranks.
        steps_used: the most steps any batch simulated (< T + S only when stopped quietly).
        inputs: the number of inputs simulated (all ranks together).
    """

    planned: PlannedSimulation
    network: SpikingNetwork
    report: list[int]
    values: list[Any]
    counter: SpikeCounter
    steps_used: int
    inputs: int


@dataclass
class MethodRun:
    """Every simulation of one method on one set of inputs.

    Attributes:
        spec: the method.
        networks: the converted networks: one, or one per T (``spec.calibrates_per_step``),
            in ascending T.
        simulations: in run order (seed by seed; one conversion after the other).
        per_step: converted once per T (T-dependent calibration).
    """

    spec: RunSpec
    networks: list[SpikingNetwork]
    simulations: list[SimulationResult]
    per_step: bool = False

    @property
    def network(self) -> SpikingNetwork:
        """The last converted network (the only one unless converted per T)."""
        return self.networks[-1]

    def by_seed(self) -> list[tuple[int, list[SimulationResult]]]:
        """(seed, its simulations in ascending T) for every seed measured at every T,
        in seed order (a deterministic network: the first seed only)."""
        seeds: dict[int, list[SimulationResult]] = {}
        for sim in self.simulations:
            seeds.setdefault(sim.planned.seed, []).append(sim)
        if self.spec.sleep_steps:  # one simulation per seed (its report may stop early when quiet)
            return list(seeds.items())
        reported = len(set(self.spec.steps))
        return [(seed, sims) for seed, sims in seeds.items() if sum(len(s.report) for s in sims) == reported]

    def schedule(self) -> tuple[list[int], list[int]]:
        """The T of every reported value and its latency in simulated steps.

        Wake-sleep runs report every total step (T = the wake steps each time, latency
        1..T+S, cut where a quiet run stopped); others report each requested T once, with
        the latency of the network that ran it (:meth:`SpikingNetwork.latency_steps`).
        """
        if self.spec.sleep_steps:
            shown = min(len(sim.report) for sim in self.simulations)
            return [self.spec.steps[0]] * shown, list(range(1, shown + 1))
        steps = sorted(set(self.spec.steps))
        if self.per_step:  # one network per T
            return steps, [snn.latency_steps(t) for snn, t in zip(self.networks, steps)]
        return steps, [self.network.latency_steps(t) for t in steps]

    def values_per_seed(self) -> tuple[list[int], list[list[Any]]]:
        """The seeds measured at every reported step and, per seed, its value at each
        step of :meth:`schedule` (wake-sleep: cut to the shortest quiet run)."""
        shown = len(self.schedule()[0])
        groups = self.by_seed()
        return [seed for seed, _ in groups], [[v for sim in sims for v in sim.values][:shown] for _, sims in groups]

    def events_per_input(self) -> list[float]:
        """Per seed (:meth:`by_seed`): spike events per input of its last simulation
        (window methods and per-T conversions: at the largest T)."""
        return [sims[-1].counter.total_events() / sims[-1].inputs for _, sims in self.by_seed()]


def seed_statistics(per_seed: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Mean and population standard deviation over seeds of each reported value
    (``per_seed[i][j]``: seed i, value j); the spread is 0.0 for one seed."""
    columns = list(zip(*per_seed))
    return [statistics.fmean(c) for c in columns], [statistics.pstdev(c) if len(c) > 1 else 0.0 for c in columns]


def summary_record(run: MethodRun, metric: str, events_key: str) -> dict:
    """The results-JSON fields every readout shares: neuron, options, the reported T, the
    ``metric`` per T (mean over seeds, ``<metric>_std`` and ``<metric>_per_seed``),
    latency, permutation, seeds, ``events_key`` (spike events per input, mean over seeds)
    and the spiking-layer count, in this order."""
    spec = run.spec
    report_steps, latency = run.schedule()
    seeds, per_seed = run.values_per_seed()
    means, spreads = seed_statistics(per_seed)
    return {
        "neuron": spec.neuron,
        "options": dict(spec.options),
        "T": report_steps,
        metric: means,
        "latency_steps": latency,
        "permute": spec.permute,
        "seeds": spec.seeds[: len(seeds)],
        f"{metric}_std": spreads,
        f"{metric}_per_seed": per_seed,
        events_key: statistics.fmean(run.events_per_input()),
        "spiking_layers": len(run.network.spiking_layers()),
    }


def combine_seed_records(records: Sequence[dict], metric: str = "accuracy", events_key: str = "spike_events_per_image") -> dict:
    """One results-JSON record from records of the same run made one seed at a time.

    Batch b of seed s uses the engine seed ``s * 1_000_003 + b`` whoever runs it, so a
    run split into one run per seed (to save after each, e.g. a long window method that
    a session may cut short) combines into exactly the record of one run of all the
    seeds: ``metric`` per T = mean over seeds, ``<metric>_std`` = population standard
    deviation, ``<metric>_per_seed`` and ``seeds`` concatenated, ``events_key`` = mean
    over seeds (as :func:`summary_record`).

    Args:
        records: one record per seed set, in seed order (each as :func:`summary_record`
            and the task's record build it; every other field must be equal).

    Raises:
        SnnconvError: no record, a seed in two records, or records whose other fields
            differ (another method, T, calibration, ...).
    """
    check(len(records) > 0, "give at least one record to combine")
    merged = {metric, f"{metric}_std", f"{metric}_per_seed", "seeds", events_key}
    first = {k: v for k, v in records[0].items() if k not in merged}
    for record in records[1:]:
        other = {k: v for k, v in record.items() if k not in merged}
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        check(not differ, f"records of different runs cannot be combined: they differ in {', '.join(differ)}")
    seeds = [s for record in records for s in record["seeds"]]
    check(len(set(seeds)) == len(seeds), f"a seed appears in two records (seeds {seeds}): combine each seed once")
    per_seed = [values for record in records for values in record[f"{metric}_per_seed"]]
    means, spreads = seed_statistics(per_seed)
    events = [record[events_key] for record in records for _ in record["seeds"]]
    combined = dict(records[0])
    combined.update({metric: means, "seeds": seeds, f"{metric}_std": spreads, f"{metric}_per_seed": per_seed,
                     events_key: statistics.fmean(events)})
    return combined


def batch_slices(count: int, batch_size: int) -> list[slice]:
    """Consecutive batches ``[0, b), [b, 2b), ...`` of ``count`` items.

    Raises:
        SnnconvError: ``batch_size`` is not an integer >= 1.
    """
    check(isinstance(batch_size, int) and batch_size >= 1, f"batch size must be an integer >= 1, got {batch_size!r}")
    return [slice(start, min(count, start + batch_size)) for start in range(0, count, batch_size)]


def merge_counters(counters: list[SpikeCounter]) -> SpikeCounter:
    """One counter holding the sums of the ranks' counters (in rank order).

    Works for any counter type: every dict of per-layer tensors (``events``, and
    ``sops`` for a :class:`snnconv.insight.CostCounter`) is summed. Each batch's counts
    are float32 sums widened to float64; adding such numbers in another order gives the
    same float64 total while it fits float64's 53-bit mantissa (always, for the integer
    counts of IF). A rank with no batch contributes an empty counter.
    """
    merged = copy.deepcopy(counters[0])
    for counter in counters[1:]:
        for attr in ("events", "sops"):
            mine, theirs = getattr(merged, attr, None), getattr(counter, attr, None)
            if mine is None or theirs is None:
                continue
            for name, values in theirs.items():
                mine[name] = mine[name] + values if name in mine else values.clone()
        merged.neurons.update(counter.neurons)
        merged.samples += counter.samples
    return merged


def _to_cpu(value: Any) -> Any:
    from torch.utils import _pytree as pytree

    return pytree.tree_map(lambda v: v.cpu() if isinstance(v, torch.Tensor) else v, value)


def run_simulation(snn: SpikingNetwork, x: torch.Tensor, planned: PlannedSimulation, readout: Readout, *, batch_size: int,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET, recorder: SpikeCounter | None = None, progress=None,
                   stop_when_quiet: bool = False) -> SimulationResult:
    """Simulate ``planned`` on the images ``x`` in batches (this rank's share) and read it out.

    Args:
        snn: the converted network; x: inputs ``[N, ...]``.
        planned: seed, T, S and the steps to read (:func:`plan_simulations`).
        readout: the task's readout (:class:`Readout`).
        batch_size: images per simulated batch (also fixes each batch's seed).
        recorder: the counter to record into (a fresh :class:`SpikeCounter` when None).
        progress: a tqdm bar to advance by every batch (times the number of ranks).
        stop_when_quiet: wake-sleep only: stop simulating once no neuron can change.

    Returns:
        A :class:`SimulationResult` with the values of every rank's batches.

    Raises:
        SnnconvError: a bad ``batch_size``, or what :func:`snnconv.simulate` raises
            (e.g. ``stop_when_quiet`` without sleep steps).
    """
    total = planned.total_steps
    counter = SpikeCounter() if recorder is None else recorder
    used = planned.steps
    parts = batch_slices(len(x), batch_size)
    partials: list[tuple[int, Any]] = []
    for index in distributed.shard_indices(len(parts)):  # all batches with one process
        part = parts[index]
        out = simulate(snn, x[part], planned.steps, sleep_steps=planned.sleep_steps, seed=planned.seed * 1_000_003 + index,
                       memory_budget=memory_budget, recorder=counter, stop_when_quiet=stop_when_quiet)
        used = max(used, out.shape[0])
        if out.shape[0] < total:  # quiet steps output zero: padding keeps every batch aligned
            out = torch.cat([out, out.new_zeros((total - out.shape[0], *out.shape[1:]))])
        partials.append((index, readout.read(out, part, planned.report)))
        if progress is not None:  # rank 0's bar stands for all ranks' (equal) shares
            progress.update((part.stop - part.start) * distributed.world_size())
    if distributed.is_distributed():
        partials = sorted((p for rank in distributed.gather_objects(_to_cpu(partials)) for p in rank), key=lambda p: p[0])
        counter = merge_counters(distributed.gather_objects(counter))
        used = max(distributed.gather_objects(used))
    values = readout.combine([p for _, p in partials], planned.report)
    report = list(planned.report)
    if planned.sleep_steps and stop_when_quiet:  # the steps no batch used are not reported
        report = [t for t in report if t <= used]
        values = values[: len(report)]
    return SimulationResult(planned, snn, report, values, counter, used, len(x))


def convert_method(model: nn.Module, spec: RunSpec, calibration_data: torch.Tensor | None = None,
                   calibration_steps: int | None = None, progress: bool = False) -> SpikingNetwork:
    """``model`` converted as ``spec`` says; with ``calibration_steps`` (T-dependent
    conversions: SNN Calibration, MSE thresholds) for that T.

    Raises:
        SnnconvError: what :func:`snnconv.convert` raises (unknown neuron or option, ...).
    """
    from ..convert import convert

    if calibration_steps is None:
        return convert(model, spec.neuron, calibration=calibration_data, threshold=spec.calibration,
                       per_channel=spec.per_channel, permute=spec.permute, **spec.options)
    return convert(model, spec.neuron, calibration=calibration_data, threshold=spec.calibration, per_channel=spec.per_channel,
                   snn_calibration=spec.snn_calibration, calibration_steps=calibration_steps, permute=spec.permute,
                   progress=progress, **spec.options)


def _bar(total: int, desc: str, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False)


def run_method(model: nn.Module, x: torch.Tensor, spec: RunSpec, readout: Readout, calibration_data: torch.Tensor | None = None,
               *, batch_size: int = 256, memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False,
               recorder: RecorderFactory | None = None) -> MethodRun:
    """Convert ``model`` with ``spec`` and run every planned simulation on ``x``.

    One conversion, simulated as :func:`plan_simulations` says; for T-dependent
    conversions (``spec.calibrates_per_step`` with calibration data or SNN Calibration)
    one conversion per T, each simulated for its T.

    Args:
        model: the source ANN; x: the inputs ``[N, ...]`` on the model's device.
        spec: the method; readout: the task's readout.
        calibration_data: training inputs for ReLU thresholds and SNN Calibration.
        recorder: ``recorder(snn)`` makes each simulation's counter (default: a
            :class:`SpikeCounter`); every counter comes back in its :class:`SimulationResult`.

    Returns:
        A :class:`MethodRun`: the networks and every simulation's values and counter.

    Raises:
        SnnconvError: an invalid ``spec`` (:meth:`RunSpec.validate`), sleep steps with a
            T-dependent conversion, or what conversion and simulation raise.
    """
    spec.validate()
    make = recorder or (lambda snn: SpikeCounter())
    permute = f"+{spec.permute}" if spec.permute else ""
    if spec.calibrates_per_step and (calibration_data is not None or spec.snn_calibration is not None):
        check(spec.sleep_steps == 0, "SNN Calibration and MSE thresholds do not combine with sleep steps")
        networks, sims = [], []
        for t in sorted(set(spec.steps)):
            snn = convert_method(model, spec, calibration_data, calibration_steps=t, progress=progress)
            networks.append(snn)
            plan = plan_simulations([t], seeds=spec.seeds, causal=snn.causal, stochastic=snn.stochastic)
            bar = _bar(len(plan) * len(x), f"{spec.neuron} T={t}", progress)
            sims += [run_simulation(snn, x, p, readout, batch_size=batch_size, memory_budget=memory_budget, recorder=make(snn),
                                    progress=bar) for p in plan]
            if bar is not None:
                bar.close()
        return MethodRun(spec, networks, sims, per_step=True)
    snn = convert_method(model, spec, calibration_data)
    plan = plan_simulations(spec.steps, sleep_steps=spec.sleep_steps, seeds=spec.seeds, causal=snn.causal,
                            stochastic=snn.stochastic)
    bar = _bar(len(plan) * len(x), f"{spec.neuron}{permute}", progress)
    sims = [run_simulation(snn, x, p, readout, batch_size=batch_size, memory_budget=memory_budget, recorder=make(snn),
                           progress=bar, stop_when_quiet=spec.stop_when_quiet) for p in plan]
    if bar is not None:
        bar.close()
    return MethodRun(spec, [snn], sims)

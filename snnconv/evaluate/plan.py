"""Which simulations an evaluation runs: a method (:class:`RunSpec`) -> planned simulations.

The one rule, written here once (every evaluation path reads it from :func:`plan_simulations`):

* **causal** networks (IF, GN, CIF without permutation) read every requested T off one
  simulation of the largest T (a run of T steps holds every shorter T as a prefix);
* **wake-sleep** runs (CIF with S sleep steps) simulate T + S steps once and read every
  total step 1..T+S;
* **window** networks (TPP, temporal permutation) depend on T as a whole: one simulation
  per T;
* all of that once per seed, and for **deterministic** networks with the first seed only
  (more seeds would repeat the same numbers).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import check


@dataclass
class RunSpec:
    """One conversion method to evaluate.

    Attributes:
        neuron: a registered neuron name (:func:`snnconv.list_neurons`).
        steps: the T values to report (wake steps for CIF).
        sleep_steps: S, CIF wake-sleep; then ``steps`` holds one T (= L).
        permute: ``"per-neuron"`` / ``"per-layer"`` temporal permutation, or None.
        seeds: seeds of stochastic runs (mean and spread reported).
        options: other neuron options (``group_size``, ``initial_potential``, ...).
        calibration: how ReLU thresholds are set (``"max"``, ``"mse"``, a percentile).
        stop_when_quiet: wake-sleep only: stop reporting once no neuron can change.
        per_channel: one ReLU threshold per output channel.
        snn_calibration: SNN Calibration after conversion (one conversion per T).
    """

    neuron: str = "if"
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    sleep_steps: int = 0
    permute: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    options: dict = field(default_factory=dict)
    calibration: str = "99.9"
    stop_when_quiet: bool = False
    per_channel: bool = False
    snn_calibration: str | None = None

    @property
    def calibrates_per_step(self) -> bool:
        """The conversion depends on T (SNN Calibration, MSE thresholds): one per T."""
        return self.snn_calibration is not None or str(self.calibration) == "mse"

    def validate(self) -> None:
        """Check the spec before any work.

        Raises:
            SnnconvError: no T, a T that is not an integer >= 1, negative sleep steps,
                several T with sleep steps, no seed, or ``stop_when_quiet`` without sleep steps.
        """
        check(len(self.steps) > 0, "give at least one T")
        for t in self.steps:
            check(isinstance(t, int) and t >= 1, f"every T must be an integer >= 1, got {t!r}")
        check(self.sleep_steps >= 0, f"sleep steps must be >= 0, got {self.sleep_steps}")
        check(self.sleep_steps == 0 or len(self.steps) == 1, "with sleep steps give one T (the wake steps, = L)")
        check(len(self.seeds) >= 1, "give at least one seed")
        check(not self.stop_when_quiet or self.sleep_steps > 0,
              f"--stop-when-quiet drops the quiet sleep steps of a wake-sleep run, and {self.neuron!r} has none: "
              "add --sleep-steps S (with cif) or drop --stop-when-quiet")


@dataclass(frozen=True)
class PlannedSimulation:
    """One simulation of an evaluation.

    Attributes:
        seed: the run's seed (batch b of the simulation uses ``seed * 1_000_003 + b``).
        steps: wake steps T simulated.
        sleep_steps: sleep steps S after them (0 without wake-sleep).
        report: the 1-based total steps read out of it, ascending.
    """

    seed: int
    steps: int
    sleep_steps: int
    report: tuple[int, ...]

    @property
    def total_steps(self) -> int:
        """T + S: the steps the simulation runs."""
        return self.steps + self.sleep_steps


def plan_simulations(steps: list[int], *, sleep_steps: int = 0, seeds: list[int] = (0,), causal: bool = True,
                     stochastic: bool = False) -> list[PlannedSimulation]:
    """The simulations that measure a network at every T in ``steps`` (module docstring's rule).

    Args:
        steps: the requested T values (duplicates and order do not matter); with
            ``sleep_steps`` exactly one T, the wake steps.
        sleep_steps: S, wake-sleep (CIF): one simulation of T + S steps read at 1..T+S.
        seeds: in order; only the first is used when not ``stochastic``.
        causal: ``SpikingNetwork.causal``: one simulation of the largest T gives every T.
        stochastic: ``SpikingNetwork.stochastic``: the network draws random numbers.

    Returns:
        Planned simulations, seed by seed; within a seed in ascending T.

    Raises:
        SnnconvError: no T, a T below 1, several T with sleep steps, or no seed.
    """
    report = sorted(set(steps))
    check(len(report) >= 1 and all(isinstance(t, int) and t >= 1 for t in report), f"every T must be an integer >= 1, got {steps!r}")
    check(sleep_steps == 0 or len(report) == 1, "with sleep steps give one T (the wake steps, = L)")
    check(len(seeds) >= 1, "give at least one seed")
    plan: list[PlannedSimulation] = []
    for seed in seeds:
        if sleep_steps:
            plan.append(PlannedSimulation(seed, report[0], sleep_steps, tuple(range(1, report[0] + sleep_steps + 1))))
        elif causal:
            plan.append(PlannedSimulation(seed, report[-1], 0, tuple(report)))
        else:
            plan += [PlannedSimulation(seed, t, 0, (t,)) for t in report]
        if not stochastic:
            break  # deterministic: more seeds would repeat the same numbers
    return plan


def report_schedule(snn, spec: RunSpec) -> tuple[list[int], list[int]]:
    """The T of every reported value and its latency in steps, before simulating.

    Wake-sleep runs report every total step (T = the wake steps each time, latency
    1..T+S); others report each requested T once, with ``snn.latency_steps(T)``
    (:meth:`snnconv.SpikingNetwork.latency_steps`). After a run,
    :meth:`snnconv.evaluate.MethodRun.schedule` gives the same, cut where a quiet
    wake-sleep run stopped.
    """
    if spec.sleep_steps:
        total = spec.steps[0] + spec.sleep_steps
        return [spec.steps[0]] * total, list(range(1, total + 1))
    report_steps = sorted(set(spec.steps))
    return report_steps, [snn.latency_steps(t) for t in report_steps]

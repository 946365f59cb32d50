"""Evaluation: which simulations to run, running them, and reading them out.

    plan.py            RunSpec (a method) and plan_simulations(): the one rule deciding
                       which simulations measure a method at every T (causal: one at
                       the largest T; window methods: one per T; one seed when deterministic)
    runner.py          convert a method, simulate the plan in batches (sharded under
                       torchrun, stop-when-quiet), one recorder per simulation -> MethodRun
    classification.py  accuracy per step           -> ClassificationResult
    detection.py       mAP per step (imports the detection task lazily) -> DetectionResult
    regression.py      mean squared error per step -> RegressionResult
    names.py           the user's module path of each spiking layer, for reports

Every result holds its JSON record and the :class:`MethodRun`: the converted
network(s) and every simulation's values and counter, named by what was simulated.
:mod:`snnconv.experiments`, :mod:`snnconv.report`, :mod:`snnconv.demo` and
:mod:`snnconv.detection.evaluate` build specs and render these results.
"""
from .classification import ClassificationReadout, ClassificationResult, evaluate_classification
from .detection import DetectionReadout, DetectionResult, evaluate_detection
from .names import display_name, layer_paths
from .plan import PlannedSimulation, RunSpec, plan_simulations, report_schedule
from .regression import RegressionReadout, RegressionResult, evaluate_regression
from .runner import (MethodRun, SimulationResult, batch_slices, combine_seed_records, convert_method, merge_counters, run_method,
                     run_simulation)

__all__ = [
    "ClassificationReadout",
    "ClassificationResult",
    "DetectionReadout",
    "DetectionResult",
    "MethodRun",
    "PlannedSimulation",
    "RegressionReadout",
    "RegressionResult",
    "RunSpec",
    "SimulationResult",
    "batch_slices",
    "combine_seed_records",
    "convert_method",
    "display_name",
    "evaluate_classification",
    "evaluate_detection",
    "evaluate_regression",
    "layer_paths",
    "merge_counters",
    "plan_simulations",
    "report_schedule",
    "run_method",
    "run_simulation",
]

"""snnconv.evaluate: the plan, the sharded runner, the readouts, and what reports read from them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from snnconv import SnnconvError, convert, create_model
from snnconv.evaluate import (
    PlannedSimulation,
    RunSpec,
    combine_seed_records,
    display_name,
    evaluate_classification,
    evaluate_detection,
    evaluate_regression,
    layer_paths,
    plan_simulations,
)
from snnconv.insight import CostCounter
from snnconv.report import CostRecorders, cost_per_step, format_report

from helpers import make_source, randomize_batchnorm, spread_thresholds

REPO = Path(__file__).resolve().parents[1]


# --- the plan ----------------------------------------------------------------------------

def test_plan_causal_reads_every_T_off_one_simulation_and_deterministic_uses_one_seed():
    assert plan_simulations([4, 1, 2, 4], seeds=[3, 5]) == [PlannedSimulation(3, 4, 0, (1, 2, 4))]
    assert plan_simulations([4, 1], seeds=[3, 5], stochastic=True) == [PlannedSimulation(3, 4, 0, (1, 4)),
                                                                      PlannedSimulation(5, 4, 0, (1, 4))]


def test_plan_window_methods_simulate_each_T_and_wake_sleep_reads_every_total_step():
    window = plan_simulations([2, 1], seeds=[0, 1], causal=False, stochastic=True)
    assert [(p.seed, p.steps, p.report) for p in window] == [(0, 1, (1,)), (0, 2, (2,)), (1, 1, (1,)), (1, 2, (2,))]
    (sleep,) = plan_simulations([4], sleep_steps=3, seeds=[7, 8])
    assert (sleep.seed, sleep.steps, sleep.sleep_steps, sleep.total_steps, sleep.report) == (7, 4, 3, 7, (1, 2, 3, 4, 5, 6, 7))
    with pytest.raises(SnnconvError, match=r"^with sleep steps give one T \(the wake steps, = L\)$"):
        plan_simulations([2, 4], sleep_steps=3)


def test_stop_when_quiet_without_sleep_steps_is_refused_before_any_work():
    model, x = make_source("small_cnn", "qcfs", dtype=torch.float32)
    with pytest.raises(SnnconvError, match=r"^--stop-when-quiet drops the quiet sleep steps .* 'tpp' has none: add --sleep-steps S"):
        evaluate_classification(model, x, torch.zeros(len(x), dtype=torch.long), RunSpec("tpp", [2], stop_when_quiet=True))


# --- classification: counters come back with the simulation that made them ---------------

def test_each_counter_is_returned_with_its_simulation_and_cost_reads_it_at_its_T():
    model, x = make_source("small_cnn", "qcfs", dtype=torch.float32, batch=12)
    y = model(x).argmax(1)
    spec = RunSpec("tpp", [1, 2, 4], seeds=[0, 1])
    result = evaluate_classification(model, x, y, spec, batch_size=5, recorder=CostRecorders(x[:1]))
    sims = result.run.simulations
    assert [(s.planned.seed, s.planned.steps, s.report) for s in sims] == [(0, 1, [1]), (0, 2, [2]), (0, 4, [4]),
                                                                         (1, 1, [1]), (1, 2, [2]), (1, 4, [4])]
    assert all(isinstance(s.counter, CostCounter) and s.network is result.network for s in sims)
    assert len({id(s.counter) for s in sims}) == 6 and sims[0].counter.profile is sims[-1].counter.profile
    events = [s.counter.total_events() / len(x) for s in sims]
    assert result.record["spike_events_per_image"] == pytest.approx((events[2] + events[5]) / 2, rel=1e-12)
    cost = cost_per_step(result.run)
    assert cost["spike_events_per_image"] == pytest.approx([(events[j] + events[3 + j]) / 2 for j in range(3)], rel=1e-12)
    assert cost["at_step"] == 4 and events[2] != events[5]  # two seeds really differ


def test_per_T_conversions_group_costs_by_seed_not_by_call_order():
    model, x = make_source("small_cnn", "relu", dtype=torch.float32, batch=12)
    y = model(x).argmax(1)
    spec = RunSpec("tpp", [2, 4], seeds=[0, 1], snn_calibration="light")
    result = evaluate_classification(model, x, y, spec, x, batch_size=6, recorder=CostRecorders(x[:1]))
    assert len(result.run.networks) == 2 and result.run.per_step
    order = [(s.planned.steps, s.planned.seed) for s in result.run.simulations]
    assert order == [(2, 0), (2, 1), (4, 0), (4, 1)]  # one conversion per T, each run for every seed
    events = {(s.planned.steps, s.planned.seed): s.counter.total_events() / len(x) for s in result.run.simulations}
    cost = cost_per_step(result.run)
    assert cost["spike_events_per_image"] == pytest.approx([(events[2, 0] + events[2, 1]) / 2, (events[4, 0] + events[4, 1]) / 2])
    assert set(result.record["calibration"]["per_T"]) == {"2", "4"}


@pytest.mark.parametrize("spec", [RunSpec("tpp", [1, 2, 4], seeds=[3, 0, 7]), RunSpec("if", [2, 4], permute="per-neuron", seeds=[0, 1])],
                         ids=["tpp", "permute"])
def test_a_run_made_one_seed_at_a_time_combines_into_exactly_the_all_seeds_record(spec):
    model, x = make_source("small_cnn", "qcfs", dtype=torch.float32, batch=12)
    y = model(x).argmax(1)
    whole = evaluate_classification(model, x, y, spec, batch_size=5).record
    parts = [evaluate_classification(model, x, y, RunSpec(**{**vars(spec), "seeds": [s]}), batch_size=5).record for s in spec.seeds]
    assert combine_seed_records(parts) == whole
    assert len({(tuple(p["accuracy"]), p["spike_events_per_image"]) for p in parts}) == len(parts)  # every seed draws its own
    first = spec.seeds[0]
    with pytest.raises(SnnconvError, match=rf"^a seed appears in two records \(seeds \[{first}, {first}\]\): combine each seed once$"):
        combine_seed_records([parts[0], parts[0]])
    with pytest.raises(SnnconvError, match=r"^records of different runs cannot be combined: they differ in T, latency_steps$"):
        combine_seed_records([parts[0], {**parts[1], "T": [9] * len(parts[1]["T"]), "latency_steps": [9]}])
    with pytest.raises(SnnconvError, match=r"^give at least one record to combine$"):
        combine_seed_records([])


# --- detection: stop-when-quiet and sharding through the shared runner --------------------

def _detector(seed: int = 2, batch: int = 4):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_model("yolo_detector", num_classes=3, in_channels=1, activation="clipfloor", levels=4, width=4).eval()
    randomize_batchnorm(model, g)
    x = torch.rand(batch, 1, 32, 32, generator=g, dtype=torch.float64)
    model = spread_thresholds(model.double(), x)
    with torch.no_grad():
        model.head.obj_out.bias.fill_(4.0)  # confident, so the random detector's boxes pass the score threshold
    return model.float(), x.float()


def test_detection_honours_stop_when_quiet():
    pytest.importorskip("pycocotools")
    from snnconv.detection import postprocess

    model, x = _detector()
    with torch.no_grad():
        truth = postprocess(model(x), 8, score_threshold=0.0, max_detections=2)
    targets = [{"boxes": d["boxes"], "labels": d["labels"]} for d in truth]  # the ANN's own boxes: ANN mAP is 1
    full = evaluate_detection(model, x, targets, 3, RunSpec("cif", [4], sleep_steps=40), batch_size=3).record
    quiet = evaluate_detection(model, x, targets, 3, RunSpec("cif", [4], sleep_steps=40, stop_when_quiet=True), batch_size=3).record
    used = quiet["steps_used"]
    assert 4 < used < 44 and quiet["stopped_when_quiet"] and "steps_used" not in full
    assert quiet["T"] == [4] * used and quiet["latency_steps"] == quiet["total_steps"] == list(range(1, used + 1))
    assert quiet["map50"] == full["map50"][:used] and quiet["map"] == full["map"][:used]
    assert full["map50"][used:] == [full["map50"][used - 1]] * (44 - used)  # the dropped steps changed nothing
    assert quiet["map50"][-1] == pytest.approx(1.0) and quiet["spike_events_per_image"] == full["spike_events_per_image"]


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "snnconv", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo")
def test_sharded_detect_evaluate_equals_a_single_process(tmp_path):
    pytest.importorskip("pycocotools")
    from snnconv.cli import main
    from test_detection import TINY, write_fake_mnist

    data = write_fake_mnist(tmp_path / "MNIST")
    out = tmp_path / "run"
    args = ["detect-train", "--data-dir", str(data), "--width", "4", "--epochs", "1", "--batch-size", "16", "--activation",
            "clipfloor", "--out", str(out), "--no-progress"] + sum((["--dataset-arg", f"{k}={v}"] for k, v in TINY.items()), [])
    assert main(args) == 0
    evaluate = ["detect-evaluate", str(out / "checkpoint.safetensors"), "--neuron", "tpp", "-T", "1,2", "--seeds", "0,1",
                "--data-dir", str(data), "--limit", "10", "--batch-size", "3", "--no-progress"]
    sharded = _torchrun(*evaluate, "--json", str(tmp_path / "dist.json"))
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert sharded.stdout.count("| tpp |") == 1  # rank 0 alone prints
    assert main([*evaluate, "--json", str(tmp_path / "single.json")]) == 0
    dist_json, single_json = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("dist", "single"))
    # 4 batches of 3 images over 2 ranks, every batch with its global seed: the same detections, the same numbers
    assert dist_json["runs"][0]["map50_per_seed"] == single_json["runs"][0]["map50_per_seed"]
    assert dist_json == single_json


# --- regression ------------------------------------------------------------------------------

def test_regression_mse_reaches_the_ann_where_the_conversion_is_exact():
    model, x = make_source("small_cnn", "qcfs", batch=10)
    with torch.no_grad():
        targets = model(x)
    gn = evaluate_regression(model, x, targets, RunSpec("gn", [1], options={"group_size": 4}), batch_size=4).record
    assert gn["T"] == [1] and gn["mse"][0] < 1e-20  # GN with tau = L at T = 1: the ANN's output
    if_run = evaluate_regression(model, x, targets, RunSpec("if", [1, 4, 32]), batch_size=4).record
    assert if_run["mse"][0] > 1e-4 and if_run["mse"][-1] < if_run["mse"][0]
    manual = ((convert(model, "if")(x, 4).cumsum(0)[-1] / 4 - targets) ** 2).mean().item()
    assert if_run["mse"][1] == pytest.approx(manual, rel=1e-9)
    with pytest.raises(SnnconvError, match=r"outputs \(10,\) per input but the targets are \(3,\)"):
        evaluate_regression(model, x, targets[:, :3], RunSpec("if", [1]))


# --- layer names: the user's module path where the network records one --------------------

def test_reports_name_layers_by_the_recorded_module_path():
    model, x = make_source("small_cnn", "qcfs", dtype=torch.float32)
    snn = convert(model, "if")
    (first, neuron), *_ = snn.spiking_layers()
    recorded = layer_paths(snn)  # conversion records where each activation sat in the source
    assert list(recorded) == [name for name, _ in snn.spiking_layers()] and recorded[first] != first
    neuron.path = "features.2"
    assert layer_paths(snn)[first] == "features.2"
    neuron.path = first  # a path equal to the graph name needs no translation
    assert first not in layer_paths(snn)
    run = {"neuron": "if", "options": {}, "T": [1], "accuracy": [0.5], "latency_steps": [1], "layer_paths": {first: "features.2"},
           "layer_error": {"steps": [1], "samples": 2, "layers": {first: [0.25], "other": [0.5]}}}
    report = format_report({"dataset": "digits", "model": "small_cnn", "ann_accuracy": 0.9, "runs": [run]})
    assert "| features.2 | 0.25 |" in report and "| other | 0.5 |" in report and f"| {first} |" not in report
    assert display_name(run, "other") == "other" and display_name({}, first) == first

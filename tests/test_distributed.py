"""torchrun (gloo on CPU): DDP training and sharded evaluation equal to one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from snnconv import distributed
from snnconv.cli import main
from snnconv.convert import convert
from snnconv.experiments import _merge_counters, evaluate_snn

from helpers import make_source

REPO = Path(__file__).resolve().parents[1]


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "snnconv", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo")
def test_torchrun_train_and_evaluate_equal_a_single_process(tmp_path):
    out = tmp_path / "run"
    trained = _torchrun("train", "--dataset", "digits", "--model-arg", "width=8", "--epochs", "1", "--batch-size", "16",
                        "--lr", "0.1", "--out", str(out), "--no-progress")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert trained.stdout.count("checkpoint:") == 1  # rank 0 alone prints
    checkpoint = out / "checkpoint.safetensors"
    from snnconv.checkpoint import read_checkpoint

    meta = read_checkpoint(checkpoint)[0]
    assert meta["epochs_done"] == 1 and meta["ann_accuracy"] > 0.2  # DDP really trained (chance: 0.1)

    evaluate = ["evaluate", str(checkpoint), "--neuron", "if", "-T", "1,2,4,8", "--batch-size", "64", "--no-progress"]
    sharded = _torchrun(*evaluate, "--json", str(tmp_path / "dist.json"))
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert sharded.stdout.count("| if |") == 1
    assert main([*evaluate, "--json", str(tmp_path / "single.json")]) == 0
    dist_json, single_json = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("dist", "single"))
    assert dist_json["samples"] == single_json["samples"] == 450
    assert dist_json["runs"][0]["accuracy"] == single_json["runs"][0]["accuracy"]  # to the last correct count
    assert dist_json["runs"][0]["spike_events_per_image"] == single_json["runs"][0]["spike_events_per_image"]
    assert dist_json == single_json


@pytest.mark.parametrize("neuron, options", [("if", {}), ("tpp", {}), ("gn", {"group_size": 2})])
def test_sharded_evaluation_sums_to_the_single_process_numbers(monkeypatch, neuron, options):
    """Each rank's share of the batches (with its global batch seeds), summed, is the whole run."""
    model, x = make_source("small_cnn", "qcfs", dtype=torch.float32, batch=100)
    y = model(x).argmax(1)
    y[::3] = (y[::3] + 1) % 10  # some wrong labels, so counts are neither 0 nor all
    snn = convert(model, neuron, **options)
    steps = 4
    whole, whole_counter, _ = evaluate_snn(snn, x, y, steps, 0, seed=5, batch_size=16)
    world = 3  # 7 batches: rank 0 gets 3 (with the short last one), ranks 1 and 2 get 2
    per_rank = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "shard_indices", lambda count, r=rank: range(r, count, world))
        per_rank.append(evaluate_snn(snn, x, y, steps, 0, seed=5, batch_size=16))
    correct = [round(sum(acc[t] * len(y) for acc, _, _ in per_rank)) for t in range(steps)]
    assert correct == [round(a * len(y)) for a in whole]
    merged = _merge_counters([c for _, c, _ in per_rank])
    assert merged.total_events() == whole_counter.total_events() and merged.samples == whole_counter.samples == len(y)
    assert merged.firing_rates() == whole_counter.firing_rates()


def test_single_process_helpers_are_the_identity():
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    t = torch.arange(3)
    assert distributed.all_reduce_sum(t) is t and distributed.sum_int(7) == 7
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}] and distributed.broadcast_object(5) == 5
    assert list(distributed.shard_indices(4)) == [0, 1, 2, 3]
    assert distributed.setup(torch.device("cpu")) == torch.device("cpu")  # no torchrun environment: no group
    assert not torch.distributed.is_initialized()

"""Training, checkpoints, datasets, the evaluation pipeline and the CLI."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from snnconv import SnnconvError, create_model, list_models
from snnconv.checkpoint import load_checkpoint, save_checkpoint
from snnconv.cli import main
from snnconv.data import load_dataset
from snnconv.experiments import RunSpec, evaluate_checkpoint, run_method
from snnconv.train import TrainConfig, train

from helpers import shared_data


def test_digits_if_snn_reaches_ann_within_one_point_by_T32(digits_source):
    model, meta, x, y, _ = digits_source
    assert meta["ann_accuracy"] > 0.9
    run = run_method(model, x, y, RunSpec("if", [1, 2, 4, 8, 16, 32]))
    assert run["T"] == [1, 2, 4, 8, 16, 32] and run["latency_steps"] == run["T"]
    assert run["accuracy"][-1] >= meta["ann_accuracy"] - 0.01
    assert run["accuracy"][0] < run["accuracy"][-1]  # T = 1 is far from the ANN


def test_checkpoint_alone_rebuilds_the_model(digits_source):
    model, meta, x, _, path = digits_source
    rebuilt, rebuilt_meta = load_checkpoint(path)
    assert rebuilt_meta["model"] == "small_cnn" and rebuilt_meta["activation"] == {"kind": "qcfs", "levels": 4}
    assert torch.equal(rebuilt(x), model(x))


def test_corrupt_and_truncated_checkpoints_are_refused(digits_source, tmp_path):
    path = digits_source[4]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    for bad in (truncated, garbage, tmp_path / "missing.safetensors"):
        with pytest.raises(SnnconvError, match="checkpoint|safetensors"):
            load_checkpoint(bad)


def test_pickle_checkpoint_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state": Evil()}))
    with pytest.raises(SnnconvError, match="pickle"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_training_resumes_to_the_same_weights(tmp_path):
    config = TrainConfig(model="small_cnn", dataset="digits", epochs=3, batch_size=128, seed=1, model_args={"width": 8})
    straight, _ = train(config, tmp_path / "a", progress=False, log=lambda m: None)
    first = TrainConfig(**config.__dict__)

    def stop_in_epoch_2(message):  # epoch 2's line is logged before its checkpoint: epoch 1's is on disk
        if message.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(first, tmp_path / "b", progress=False, log=stop_in_epoch_2)
    from snnconv.checkpoint import read_checkpoint

    assert read_checkpoint(tmp_path / "b" / "checkpoint.safetensors")[0]["epochs_done"] == 1  # a real resume follows
    messages = []
    resumed, meta = train(first, tmp_path / "b", progress=False, log=messages.append)
    assert messages[0] == "resuming from epoch 1 of 3" and meta["epochs_done"] == 3
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_with_another_config_is_refused(tmp_path):
    config = TrainConfig(model="small_cnn", dataset="digits", epochs=1, model_args={"width": 8})
    train(config, tmp_path, progress=False, log=lambda m: None)
    with pytest.raises(SnnconvError, match=r"different training configuration \(lr: 0.05 in the checkpoint, 0.1 now\)"):
        train(TrainConfig(model="small_cnn", dataset="digits", epochs=1, lr=0.1, model_args={"width": 8}), tmp_path, progress=False, log=lambda m: None)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_and_converts(name):
    from snnconv import convert

    size, channels = (8, 1) if name == "small_cnn" else (32, 3)
    model = create_model(name, in_channels=channels).eval()
    x = torch.rand(1, channels, size, size)
    out = convert(model, "if")(x, 2)
    # detectors output a raw map [T, batch, 5 + classes, H / 8, W / 8]
    assert out.shape == ((2, 1, 15, 4, 4) if name == "yolo_detector" else (2, 1, 10))


def test_unknown_model_and_dataset():
    with pytest.raises(SnnconvError, match="unknown model"):
        create_model("resnet1000")
    with pytest.raises(SnnconvError, match="unknown dataset"):
        load_dataset("imagenet21k", "test")


def test_idx_loader_on_generated_files_and_errors(tmp_path):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8).numpy()
    labels = torch.arange(5, dtype=torch.uint8).numpy()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes.fromhex("00000803") + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + images.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes.fromhex("00000801") + (5).to_bytes(4, "big") + labels.tobytes())
    data = load_dataset("mnist", "test", tmp_path)
    assert data.images.shape == (5, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(SnnconvError, match="missing file"):
        load_dataset("mnist", "train", tmp_path)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes.fromhex("00000801") + (9).to_bytes(4, "big") + labels.tobytes())
    with pytest.raises(SnnconvError, match="truncated"):
        load_dataset("mnist", "test", tmp_path)
    with pytest.raises(SnnconvError, match="does not exist"):
        load_dataset("mnist", "test", tmp_path / "nowhere")


def test_real_mnist_files():
    data = load_dataset("mnist", "test", shared_data("MNIST"))
    assert data.images.shape == (10000, 1, 28, 28) and data.labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_evaluate_writes_the_results_json(digits_source, tmp_path):
    path = digits_source[4]
    out = tmp_path / "r.json"
    results = evaluate_checkpoint(path, [RunSpec("if", [1, 4]), RunSpec("gn", [1], options={"group_size": 4})], limit=100,
                                  progress=False, json_path=out)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert {"dataset", "model", "ann_accuracy", "runs"} <= set(saved)
    for run in saved["runs"]:
        assert {"neuron", "options", "T", "accuracy", "latency_steps"} <= set(run)
        assert all(0 <= a <= 1 for a in run["accuracy"])
    # GN with tau = L at T = 1 is the ANN exactly
    assert saved["runs"][1]["accuracy"][0] == saved["ann_accuracy"]


def test_cli_evaluate_and_errors(digits_source, tmp_path, capsys):
    path = str(digits_source[4])
    assert main(["evaluate", path, "--neuron", "if", "-T", "1,8", "--limit", "50", "--no-progress", "--json", str(tmp_path / "o.json")]) == 0
    assert "| if |" in capsys.readouterr().out
    cases = [
        (["evaluate", path, "--neuron", "nope"], "unknown neuron"),
        (["evaluate", path, "-T", "0"], "T must be >= 1"),
        (["evaluate", str(tmp_path / "none.safetensors")], "does not exist"),
        (["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")], "missing file"),
        (["train", "--model", "gpt", "--out", str(tmp_path / "o2")], "unknown model"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "snnconv", "list"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "neurons: cif, gn, if, tpp" in result.stdout


def test_cif_run_reports_every_total_step_and_can_stop_when_quiet():
    from helpers import make_source

    model, x = make_source("small_cnn", "clipfloor", batch=8, dtype=torch.float64)
    y = model(x).argmax(1)
    full = run_method(model, x, y, RunSpec("cif", [4], sleep_steps=30))
    assert full["latency_steps"] == list(range(1, 35)) and full["wake_steps"] == 4
    assert full["accuracy"][-1] == 1.0  # the ANN's own predictions, reproduced exactly
    quiet = run_method(model, x, y, RunSpec("cif", [4], sleep_steps=30, stop_when_quiet=True))
    used = quiet["steps_used"]
    assert 4 < used < 34 and quiet["accuracy"] == full["accuracy"][:used]


# ---- the detector trains through the same loop: resume, stale temporaries, divergence ------

DETECTION_TINY = {"train_count": 48, "test_count": 16, "size": 32, "min_scale": 10, "max_scale": 16, "max_objects": 2}


def _fake_mnist(folder, count=64):
    """Official idx .gz files whose 'digits' are bright bars of a class-dependent height."""
    import struct

    labels = (torch.arange(count) * 7 % 10).to(torch.uint8)
    images = torch.zeros(count, 28, 28, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        images[i, 4 : 8 + 2 * label, 6:22] = 255
    raw = folder / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        with gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, count, 28, 28) + images.numpy().tobytes())
        with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, count) + labels.numpy().tobytes())
    return folder


def _detector_config(**changes):
    from snnconv.detection.train import DetectTrainConfig

    return DetectTrainConfig(**{"dataset_args": dict(DETECTION_TINY), "width": 4, "epochs": 2, "batch_size": 16, "lr": 5e-3,
                                "flip": True, **changes})


def test_detector_resumes_and_cleans_stale_temporaries_through_the_shared_loop(tmp_path):
    from snnconv.checkpoint import read_checkpoint
    from snnconv.detection.train import train_detector

    data = _fake_mnist(tmp_path / "MNIST")
    straight, meta = train_detector(_detector_config(), tmp_path / "a", data, progress=False, log=lambda m: None)

    def stop_in_epoch_2(message):  # epoch 2's line is logged before its checkpoint: epoch 1's is on disk
        if message.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_detector(_detector_config(), tmp_path / "b", data, progress=False, log=stop_in_epoch_2)
    assert read_checkpoint(tmp_path / "b" / "checkpoint.safetensors")[0]["epochs_done"] == 1
    stale = [".checkpoint.safetensors.k2j4h5g6.tmp", ".tmpOjvS08"]  # a write killed mid-way (ours, safetensors')
    for name in stale:
        (tmp_path / "b" / name).write_bytes(b"half a checkpoint")
    messages = []
    resumed, resumed_meta = train_detector(_detector_config(), tmp_path / "b", data, progress=False, log=messages.append)
    assert messages[0] == "resuming from epoch 1 of 2"
    assert sorted(os.listdir(tmp_path / "b")) == ["checkpoint.safetensors"]  # the temporaries are gone
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    (_, _, optim_a), (_, _, optim_b) = (read_checkpoint(tmp_path / run / "checkpoint.safetensors") for run in "ab")
    assert optim_a.keys() == optim_b.keys() and any(k.endswith(".exp_avg_sq") for k in optim_a)  # AdamW's whole state
    assert all(torch.equal(optim_a[k], optim_b[k]) for k in optim_a)
    assert resumed_meta["history"] == meta["history"] and [h["epoch"] for h in meta["history"]] == [1, 2]


def test_detector_divergence_and_foreign_checkpoints_are_caught_by_the_shared_loop(tmp_path, monkeypatch, digits_source):
    import shutil

    import snnconv.detection.train as detection_train
    from snnconv.detection.train import train_detector

    data = _fake_mnist(tmp_path / "MNIST")
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    shutil.copy(digits_source[4], classifier / "checkpoint.safetensors")
    with pytest.raises(SnnconvError, match=r"^'.*classifier/checkpoint.safetensors' is not a detection checkpoint: use another --out$"):
        train_detector(_detector_config(), classifier, data, progress=False, log=lambda m: None)

    real, calls = detection_train.detection_loss, []

    def nan_at_step_5(*args, **kwargs):  # epoch 2, step 2 (3 steps per epoch)
        calls.append(1)
        loss, parts = real(*args, **kwargs)
        return (loss * float("nan") if len(calls) == 5 else loss), parts

    monkeypatch.setattr(detection_train, "detection_loss", nan_at_step_5)
    out = tmp_path / "run"
    with pytest.raises(SnnconvError) as caught:
        train_detector(_detector_config(), out, data, progress=False, log=lambda m: None)
    message = str(caught.value)
    assert message.startswith("training diverged: the loss became nan at epoch 2, step 2 of 3; "), message
    assert f"the checkpoint of epoch 1 in {str(out / 'checkpoint.safetensors')!r} is kept" in message


DDP_DETECTOR = """
import hashlib, json, sys
import torch
from snnconv import distributed
from snnconv.detection.train import DetectTrainConfig, train_detector

data, out, dataset_args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
config = DetectTrainConfig(dataset_args=dataset_args, width=4, epochs=1, batch_size=16, lr=5e-3, flip=True)
model, meta = train_detector(config, out, data, progress=False)
digest = hashlib.sha256()
for name, tensor in model.state_dict().items():
    digest.update(name.encode() + tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
with open(f"{out}/rank{distributed.rank()}.json", "w") as f:
    json.dump({"sha": digest.hexdigest(), "world": distributed.world_size()}, f)
distributed.shutdown()
"""


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo")
def test_torchrun_trains_the_detector_with_ddp(tmp_path):
    from pathlib import Path

    from snnconv.checkpoint import read_checkpoint

    data = _fake_mnist(tmp_path / "MNIST")
    script = tmp_path / "ddp_detector.py"
    script.write_text(DDP_DETECTOR)
    repo, out = Path(__file__).resolve().parents[1], tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
                          str(data), str(out), json.dumps(DETECTION_TINY)], capture_output=True, text=True, timeout=300, env=env,
                         cwd=repo)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("epoch 1/1: test mAP@0.5") == 1  # rank 0 alone speaks
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Each rank trained on its own half of every batch (8 of 16 images, flipped by its own
    # stream); DDP's averaged gradients keep the two replicas bit-identical.
    assert ranks[0]["world"] == ranks[1]["world"] == 2 and ranks[0]["sha"] == ranks[1]["sha"]
    meta, state, _ = read_checkpoint(out / "checkpoint.safetensors")
    assert meta["epochs_done"] == 1 and meta["task"] == "detection" and len(state) > 0

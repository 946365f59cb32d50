"""Fine-tuning from a checkpoint (``snnconv train --init-from``): what is copied, the
provenance record, resumes, and the refusals."""
from __future__ import annotations

import pytest
import torch

from snnconv import SnnconvError
from snnconv.activations import init_thresholds
from snnconv.checkpoint import load_checkpoint, read_checkpoint
from snnconv.cli import main
from snnconv.data import load_dataset
from snnconv.metrics import accuracy
from snnconv.train import ClassifierTask, TrainConfig, train


def _quiet(message):
    pass


def _built(config: TrainConfig) -> torch.nn.Module:
    """The model a fresh run of ``config`` starts from (no training step)."""
    task = ClassifierTask(config)
    task.load_data(None)
    torch.manual_seed(config.seed)
    return task.build_model(torch.device("cpu"))


@pytest.fixture(scope="module")
def relu_source(tmp_path_factory):
    """A ReLU small_cnn (width 8) after 2 epochs on digits."""
    out = tmp_path_factory.mktemp("relu")
    config = TrainConfig(model="small_cnn", dataset="digits", activation="relu", epochs=2, model_args={"width": 8})
    train(config, out, progress=False, log=_quiet)
    return out / "checkpoint.safetensors"


def test_clipfloor_from_qcfs_starts_with_every_weight_and_lambda(digits_source):
    *_, path = digits_source
    source, _ = load_checkpoint(path)
    model = _built(TrainConfig(model="small_cnn", dataset="digits", activation="clipfloor", levels=8, init_from=str(path)))
    ours, theirs = model.state_dict(), source.state_dict()
    assert ours.keys() == theirs.keys() and any(k.endswith(".threshold") for k in ours)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("activation", ["clipfloor", "qcfs"])
def test_between_qcfs_and_clipfloor_the_first_weights_compute_the_source_exactly(digits_source, tmp_path, activation):
    """QCFS(z) = ClipFloor(z + λ/2L): with the same L, the bias before each activation moves by
    (φ_source - φ)·λ/L, and the fine-tuning run starts from the source's very function."""
    _, _, x, _, path = digits_source
    if activation == "qcfs":  # clip-floor -> QCFS: the way back, from the moved clip-floor model
        start = _built(TrainConfig(model="small_cnn", dataset="digits", activation="clipfloor", levels=4, init_from=str(path)))
        from snnconv.checkpoint import save_checkpoint

        meta = read_checkpoint(path)[0]
        meta |= {"activation": {"kind": "clipfloor", "levels": 4}, "model_args": meta["model_args"] | {"activation": "clipfloor"}}
        path = save_checkpoint(tmp_path / "clipfloor.safetensors", start, meta)
    source, _ = load_checkpoint(path)
    task = ClassifierTask(TrainConfig(model="small_cnn", dataset="digits", activation=activation, levels=4, init_from=str(path)))
    task.load_data(None)
    model = task.build_model(torch.device("cpu"))
    assert task.shift_matched
    differ = {k for k, v in model.state_dict().items() if not torch.equal(v, source.state_dict()[k])}
    assert differ and all(k.endswith(".bias") for k in differ)  # only the biases before the activations moved
    shapes = {name: m for name, m in model.named_modules() if hasattr(m, "shift")}
    step = 0.5 if activation == "clipfloor" else -0.5
    moved = sorted(float((model.state_dict()[k] - source.state_dict()[k]).mean()) for k in differ)
    expected = sorted(step * m.threshold.item() / m.levels for m in shapes.values())
    assert moved == pytest.approx(expected, rel=1e-5)
    model.double().eval(), source.double().eval()
    with torch.no_grad():
        assert float((model(x.double()) - source(x.double())).abs().max()) < 1e-9
    # other L: no exact move exists, so the weights are copied as they are
    other = ClassifierTask(TrainConfig(model="small_cnn", dataset="digits", activation=activation, levels=8, init_from=str(path)))
    other.load_data(None)
    other.build_model(torch.device("cpu"))
    assert not other.shift_matched


def test_qcfs_from_relu_copies_the_weights_and_fits_lambda_to_them(relu_source):
    source, _ = load_checkpoint(relu_source)
    config = TrainConfig(model="small_cnn", dataset="digits", activation="qcfs", model_args={"width": 8}, init_from=str(relu_source))
    model = _built(config)
    theirs = source.state_dict()
    lambdas = {k: v for k, v in model.state_dict().items() if k.endswith(".threshold")}
    assert lambdas and lambdas.keys().isdisjoint(theirs)
    for key, value in model.state_dict().items():
        if key not in lambdas:
            assert torch.equal(value, theirs[key]), key
    # lambda: the percentile rule on the copied weights (as a fresh run applies it to its own)
    reference = _built(TrainConfig(**{**config.__dict__, "threshold_percentile": None}))
    digits = load_dataset("digits", "train")
    first = torch.randperm(len(digits.labels), generator=torch.Generator().manual_seed(0))[:512]
    expected = init_thresholds(reference, digits.normalized(first), 85.0)
    assert [float(v) for v in lambdas.values()] == pytest.approx(expected, rel=1e-6)
    fresh = _built(TrainConfig(model="small_cnn", dataset="digits", activation="qcfs", model_args={"width": 8}))
    assert not torch.equal(fresh.state_dict()[next(iter(theirs))], model.state_dict()[next(iter(theirs))])


def test_one_epoch_of_fine_tuning_keeps_the_source_accuracy(digits_source, tmp_path):
    """A clip-floor run from the QCFS source starts where the source is: after one epoch at a
    small learning rate it is within 3 points of it, where one epoch from scratch is far
    below; the checkpoint records where it started."""
    _, meta, x, y, path = digits_source
    config = dict(model="small_cnn", dataset="digits", activation="clipfloor", epochs=1, lr=0.005)
    tuned, tuned_meta = train(TrainConfig(**config, init_from=str(path)), tmp_path / "tuned", progress=False, log=_quiet)
    scratch, _ = train(TrainConfig(**config), tmp_path / "scratch", progress=False, log=_quiet)
    assert accuracy(tuned, x, y) >= meta["ann_accuracy"] - 0.03
    assert accuracy(scratch, x, y) < meta["ann_accuracy"] - 0.2
    record = tuned_meta["init_from"]
    assert record["checkpoint"] == str(path) and record["ann_accuracy"] == meta["ann_accuracy"]
    assert record["activation"] == {"kind": "qcfs", "levels": 4} and record["epochs_done"] == 20
    assert record["shift_matched"] is True
    assert read_checkpoint(tmp_path / "tuned" / "checkpoint.safetensors")[0]["train_config"]["init_from"] == str(path)


def test_a_fine_tuning_run_resumes_to_the_same_weights(relu_source, tmp_path):
    config = TrainConfig(model="small_cnn", dataset="digits", activation="qcfs", epochs=2, model_args={"width": 8},
                         init_from=str(relu_source))
    straight, _ = train(config, tmp_path / "a", progress=False, log=_quiet)

    def stop_in_epoch_2(message):
        if message.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "b", progress=False, log=stop_in_epoch_2)
    messages = []
    resumed, meta = train(config, tmp_path / "b", progress=False, log=messages.append)
    assert messages[0] == "resuming from epoch 1 of 2" and meta["init_from"]["checkpoint"] == str(relu_source)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("change,message", [
    ({"model": "vgg6"}, r"--init-from .* holds a small_cnn, not the vgg6 of --model: pass --model small_cnn"),
    ({"model_args": {"width": 16}}, r"--init-from .* has width=8 where this run needs 16"),
])
def test_another_network_is_refused_before_anything_is_written(relu_source, tmp_path, change, message):
    config = TrainConfig(**{**dict(model="small_cnn", dataset="digits", epochs=1, model_args={"width": 8},
                                   init_from=str(relu_source)), **change})
    with pytest.raises(SnnconvError, match=message):
        train(config, tmp_path / "out", progress=False, log=_quiet)
    assert not (tmp_path / "out" / "checkpoint.safetensors").exists()


def test_a_missing_or_broken_initial_checkpoint_is_refused_first(tmp_path, monkeypatch):
    """Named before the datasets are read (the loader would fail on a missing --data-dir)."""
    read = []
    monkeypatch.setattr("snnconv.train.load_dataset", lambda *a: read.append(a))
    with pytest.raises(SnnconvError, match="does not exist"):
        train(TrainConfig(init_from=str(tmp_path / "nope.safetensors")), tmp_path / "out", progress=False, log=_quiet)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(SnnconvError, match="broken.safetensors"):
        train(TrainConfig(init_from=str(broken)), tmp_path / "out", progress=False, log=_quiet)
    assert read == [] and not (tmp_path / "out" / "checkpoint.safetensors").exists()
    with pytest.raises(SnnconvError, match="init_from must be a checkpoint path or zoo name"):
        train(TrainConfig(init_from=" "), tmp_path / "out", progress=False, log=_quiet)


def test_cli_fine_tunes_from_a_checkpoint(digits_source, tmp_path, capsys):
    *_, path = digits_source
    main(["train", "--model", "small_cnn", "--dataset", "digits", "--activation", "clipfloor", "--epochs", "1",
          "--lr", "0.005", "--init-from", str(path), "--out", str(tmp_path / "cli"), "--no-progress"])
    meta = read_checkpoint(tmp_path / "cli" / "checkpoint.safetensors")[0]
    assert meta["init_from"]["checkpoint"] == str(path) and meta["activation"] == {"kind": "clipfloor", "levels": 4}


def test_zoo_card_names_the_fine_tuning(tmp_path):
    """The zoo card's command and text say where a fine-tuned source started."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import zoo_card

    config = {**TrainConfig(model="resnet20", dataset="cifar10_jpeg", activation="clipfloor", epochs=40, lr=0.01,
                            init_from="resnet20_qcfs4_cifar10jpeg").__dict__}
    start = {"checkpoint": "resnet20_qcfs4_cifar10jpeg", "model": "resnet20", "activation": {"kind": "qcfs", "levels": 4},
             "epochs_done": 60, "ann_accuracy": 0.8543}
    meta = {"model": "resnet20", "activation": {"kind": "clipfloor", "levels": 4}, "train_config": config, "epochs_done": 40,
            "history": [], "ann_accuracy": 0.85, "clip_limit_accuracy": 0.2, "init_from": start}
    command = zoo_card.training_commands(meta, "resnet20_clipfloor4_ft", tmp_path / "train.log")
    assert command == ("EPOCHS=40 bash zoo/train_resnet20.sh clipfloor zoo/resnet20_clipfloor4_ft ../shared/data/cifar10 "
                       "--lr 0.01 --init-from resnet20_qcfs4_cifar10jpeg")
    scores = {"images": 10, "ann_accuracy": 0.9, "clip_limit_accuracy": 0.2}
    text = zoo_card.card("resnet20_clipfloor4_ft", meta, scores, scores, scores, command)
    assert "fine-tuned from `resnet20_qcfs4_cifar10jpeg` (resnet20, qcfs activations, 60 epochs, ANN 85.43%)" in text


def test_every_resnet20_activation_has_its_own_bias_to_move_and_other_models_are_left_alone():
    from torch import nn

    from snnconv import ClipFloor, QCFS, create_model
    from snnconv.phase_shift import bias_carriers, match_shift

    carriers = bias_carriers(create_model("resnet20", num_classes=10, in_channels=3, activation="clipfloor", levels=4))
    assert len(carriers) == 19 and None not in carriers.values() and len(set(carriers.values())) == 19
    assert carriers["1.act"] == "1.body.2"  # after the residual addition: the body's last BatchNorm

    class NoBias(nn.Module):  # an activation fed by a bias-free conv: no exact move, nothing changes
        def __init__(self, activation):
            super().__init__()
            self.conv, self.act, self.fc = nn.Conv2d(1, 2, 3, bias=False), activation, nn.Linear(2 * 36, 3)

        def forward(self, x):
            return self.fc(self.act(self.conv(x)).flatten(1))

    source, model = NoBias(QCFS(4, 1.0)), NoBias(ClipFloor(4, 1.0))
    model.load_state_dict(source.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert bias_carriers(model) == {"act": None} and not match_shift(model, source)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_zoo_qcfs_source_moved_to_clipfloor_keeps_its_predictions():
    """On the ResNet-20 zoo source (first 500 CIFAR-10 JPEG-q75 test images): copied into
    clip-floor activations unmoved it collapses (below 20%), moved by λ/2L it predicts the
    QCFS source's class on every image."""
    from helpers import shared_data

    from snnconv import create_model
    from snnconv.phase_shift import match_shift
    from snnconv.zoo import load_pretrained

    test = load_dataset("cifar10_jpeg", "test", shared_data("cifar10"))
    x, y = test.normalized(slice(0, 500)), test.labels[:500]
    source, meta = load_pretrained("resnet20_qcfs4_cifar10jpeg")
    model = create_model("resnet20", **{**meta["model_args"], "activation": "clipfloor"})
    model.load_state_dict(source.state_dict())
    source.eval(), model.eval()
    assert accuracy(model, x, y) < 0.2
    assert match_shift(model, source)
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), source(x).argmax(1))

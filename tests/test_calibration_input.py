"""Issue 15's bad-input list, through convert() and the CLI: calibration data of the wrong
dtype, shape or channel count, NaN/inf, too few images for the percentile, and bad
calibration keywords give one SnnconvError line naming the problem and the fix, raised
before any calibration pass, with the user's model unchanged; and the results JSON
records every calibration choice as applied."""
from __future__ import annotations

import importlib
import json

import pytest
import torch
from torch import nn

import snnconv.experiments
import snnconv.report
from snnconv import SnnconvError, convert, create_model
from snnconv.checkpoint import save_checkpoint
from snnconv.cli import main
from snnconv.evaluate import RunSpec, evaluate_classification

from helpers import make_source

# the modules themselves (the package exports functions named convert and evaluate)
CONVERT = importlib.import_module("snnconv.convert")
CALIBRATE = importlib.import_module("snnconv.convert.calibrate")
RUNNER = importlib.import_module("snnconv.evaluate.runner")

UINT8 = "calibration data is torch.uint8, not floating point: scale it to floats first (e.g. x.float() / 255, then the training normalisation)"
NAN = "calibration data contains NaN or inf: clean the data first"
CHANNELS = "calibration data has 3 channels (dim 1) but layer '0.0' (Conv2d) takes 1: give data shaped like the training data"
RANK = "calibration data has shape (48, 8, 8) but layer '0.0' (Conv2d) takes [batch, 1, ...] with 4 dims: add the batch dimension (x.unsqueeze(0))"


def _source():
    model, _ = make_source("small_cnn", "relu", seed=0, batch=1)
    x = torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, x


def _forbidden(*args, **kwargs):
    raise AssertionError("work started before the input was refused")


def _nan(x, value=float("nan")):
    x = x.clone()
    x[3, 0, 2, 5] = value
    return x


@pytest.fixture
def no_calibration_pass(monkeypatch):
    """Any threshold pass over the data, neuron swap or SNN Calibration fails the test."""
    monkeypatch.setattr(CALIBRATE, "_rows", _forbidden)  # the threshold pass's hook
    monkeypatch.setattr(CONVERT, "swap_to_neurons", _forbidden)
    monkeypatch.setattr(CONVERT, "calibrate_snn", _forbidden)


OPTIONS = [
    {},
    {"threshold": "max", "per_channel": True},
    {"threshold": "mse", "calibration_steps": 2},
    {"snn_calibration": "light", "calibration_steps": 2},
    {"snn_calibration": "advanced", "calibration_steps": 2, "weight_calibration": {"iterations": 3}},
]
BAD_DATA = [
    (lambda x: (x * 255).to(torch.uint8), UINT8),
    (lambda x: (x * 255).long(), UINT8.replace("uint8", "int64")),
    (lambda x: x > 0.5, UINT8.replace("uint8", "bool")),
    (lambda x: x.repeat(1, 3, 1, 1), CHANNELS),
    (lambda x: x[:, 0], RANK),
    (lambda x: torch.rand(4, 1, 2, 2, dtype=torch.float64), "calibration data of shape (4, 1, 2, 2) does not fit the model"),
    (_nan, NAN),
    (lambda x: _nan(x, float("inf")), NAN),
    (lambda x: _nan(x, -float("inf")), NAN),
    (lambda x: x[:0], "calibration data is empty: shape (0, 1, 8, 8) holds no samples; pass at least one"),
    (lambda x: torch.empty(4, 1, 8, 8, device="meta"), "calibration data is on the meta device and holds no values"),
    # the same checks and messages for an iterable of batches as for one tensor
    (lambda x: [x[:24], (x[24:] * 255).to(torch.uint8)], UINT8),
    (lambda x: [(x[:24], None), (_nan(x[24:]), None)], NAN),
    (lambda x: [x[:24].repeat(1, 3, 1, 1)], CHANNELS),
    (lambda x: [x[:24], x[24:, :, :4, :4]], "calibration batches must share one shape [N, ...], got (24, 1, 4, 4) after (None, 1, 8, 8)"),
    (lambda x: {"images": x}, "calibration data must be a tensor [N, ...] or an iterable of batches, got dict"),
    (lambda x: x.numpy(), "calibration batches must be tensors (or (x, y) pairs), got ndarray"),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("bad, message", BAD_DATA)
def test_bad_calibration_data_is_one_line_before_any_pass_and_the_model_is_unchanged(bad, message, options, no_calibration_pass):
    model, x = _source()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SnnconvError) as err:
        convert(model, "if", calibration=bad(x), **options)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(message), str(err.value)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_other_float_precisions_are_calibration_data_too():
    model, x = _source()
    reference = [float(m.threshold) for _, m in convert(model, "if", calibration=x, threshold="max").spiking_layers()]
    for dtype in (torch.float32, torch.float16):
        data = x.to(dtype)
        got = [float(m.threshold) for _, m in convert(model, "if", calibration=data, threshold="max").spiking_layers()]
        expected = [float(m.threshold) for _, m in convert(model, "if", calibration=data.double(), threshold="max").spiking_layers()]
        assert got == expected  # cast to the model's dtype, nothing else
        assert got == pytest.approx(reference, rel=2e-3)


def _tiny_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1) * torch.rand(1, 1, 3, 3))  # both channels fire
        model[0].bias.copy_(torch.tensor([-1.0, 3.0]))
    return model


@pytest.mark.parametrize("percentile, per_channel, per_image, need", [
    (99.9, False, 72, 1000),  # per layer: 2 channels x 6 x 6 values per image
    (99.0, True, 36, 100),    # per channel: 6 x 6 values per image and threshold
    (99.99, True, 36, 10000),
])
def test_too_few_images_for_the_percentile_is_refused_before_the_pass_at_the_exact_count(percentile, per_channel, per_image,
                                                                                         need, monkeypatch):
    model = _tiny_relu()
    x = torch.rand(400, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    enough = -(-need // per_image)  # ceil
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with monkeypatch.context() as patch:  # refused before the pass over the data
        patch.setattr(CALIBRATE, "_rows", _forbidden)
        with pytest.raises(SnnconvError) as err:
            convert(model, "if", calibration=x, calibration_images=enough - 1, threshold=percentile, per_channel=per_channel)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"activation '1' gives {(enough - 1) * per_image} values per threshold on {enough - 1} calibration "
                              f"image(s) ({per_image} per image); the {percentile:g}th percentile needs at least {need}: "
                              f"pass at least {enough} images (calibration=x; --calibration-images N), or a lower percentile")
    assert ("one threshold per layer (per_channel=False; no --per-channel)" in message) == per_channel
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    if enough <= len(x):  # one image more is enough, and the threshold is that percentile of the values
        snn = convert(model, "if", calibration=x, calibration_images=enough, threshold=percentile, per_channel=per_channel)
        with torch.no_grad():
            acts = torch.relu(model[0](x[:enough]))
        rows = acts.transpose(0, 1).reshape(2, -1) if per_channel else acts.reshape(1, -1)
        theta = snn.spiking_layers()[0][1].threshold
        for row, got in zip(rows, torch.as_tensor(theta).flatten()):
            positive = row[row > 0]
            k = max(1, min(positive.numel(), round(percentile / 100 * positive.numel())))
            assert float(got) == float(positive.kthvalue(k).values)


@pytest.mark.parametrize("kwargs, message", [
    ({"calibration_target": "bias"}, "the calibration target must be one of output, preactivation, got 'bias'"),
    ({"weight_calibration": {"iters": 5}}, "weight_calibration has no setting 'iters': use iterations, learning_rate, batch_size, objective"),
    ({"weight_calibration": 5}, "weight_calibration must be a WeightCalibration or a dict of its fields, got int"),
    ({"weight_calibration": {"iterations": 0}}, "weight calibration iterations must be an integer >= 1, got 0"),
    ({"calibration_seed": "a"}, "calibration_seed must be an integer, got 'a'"),
    ({"calibration_steps": 0, "snn_calibration": None}, "calibration_steps must be None or the T to calibrate for (an integer >= 1), got 0"),
    ({"per_channel": "yes"}, "per_channel must be True or False, got 'yes'"),
])
def test_bad_calibration_keywords_are_refused_before_tracing(kwargs, message, monkeypatch):
    model, x = _source()
    monkeypatch.setattr(CONVERT, "prepare", _forbidden)
    options = {"snn_calibration": "advanced", "calibration_steps": 2, **kwargs}
    with pytest.raises(SnnconvError) as err:
        convert(model, "if", calibration=x, **options)
    assert str(err.value) == message


def test_a_trained_threshold_source_refuses_per_channel_and_records_no_threshold():
    model, x = make_source("small_cnn", "qcfs", seed=0, batch=8)
    for calibration in (None, x):
        with pytest.raises(SnnconvError, match=r"^per_channel=True \(--per-channel\) sets the thresholds of plain ReLU activations, "
                                               r"and Sequential has none: .*drop per_channel$"):
            convert(model, "if", calibration=calibration, per_channel=True)
    plain = convert(model, "if")
    given = convert(model, "if", calibration=x, threshold="max")  # nothing to calibrate: the same network, recorded so
    assert given.calibration == {"threshold": None, "per_channel": False, "snn_calibration": None, "calibration_steps": None,
                                 "images": 0}
    assert torch.equal(given(x, 4), plain(x, 4))
    snnc = convert(model, "if", calibration=x, snn_calibration="bias", calibration_steps=2)
    assert snnc.calibration["threshold"] is None and snnc.calibration["images"] == 8


# ---------------------------------------------------------------- CLI


def _checkpoint(path, activation):
    args = {"num_classes": 10, "in_channels": 1, "activation": activation, "levels": 4, "width": 4}
    torch.manual_seed(0)
    meta = {"model": "small_cnn", "model_args": args, "dataset": "digits", "activation": {"kind": activation, "levels": 4},
            "epochs_done": 1, "ann_accuracy": 0.1}
    save_checkpoint(path, create_model("small_cnn", **args), meta)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cal_ckpt")
    return {kind: _checkpoint(folder / f"{kind}.safetensors", kind) for kind in ("relu", "qcfs")}


def _one_line(capsys, text):
    err = capsys.readouterr().err
    assert err.startswith("snnconv: error: ") and err.count("\n") == 1, err
    assert text in err, err


@pytest.fixture
def no_simulation(monkeypatch):
    monkeypatch.setattr(RUNNER, "run_simulation", _forbidden)
    monkeypatch.setattr(CONVERT, "calibrate_snn", _forbidden)


@pytest.mark.parametrize("extra, message", [
    (["--calibrate", "99.9", "--calibration-images", "10"],
     "activation '8' gives 160 values per threshold on 10 calibration image(s) (16 per image); the 99.9th percentile needs "
     "at least 1000: pass at least 63 images (calibration=x; --calibration-images N), or a lower percentile (threshold=; --calibrate)"),
    (["-T", "2,4", "--per-channel", "--snn-calibration", "light", "--calibration-images", "10"],
     "activation '0.2' gives 640 values per threshold on 10 calibration image(s) (64 per image); the 99.9th percentile needs at "
     "least 1000: pass at least 16 images (calibration=x; --calibration-images N), or a lower percentile (threshold=; --calibrate), "
     "or one threshold per layer (per_channel=False; no --per-channel)"),
    (["--calibrate", "mse", "--calibration-images", "0"], "--calibration-images must be an integer >= 1, got 0"),
])
def test_cli_too_few_calibration_images_is_one_line_before_any_simulation(checkpoints, extra, message, capsys, no_simulation):
    argv = ["evaluate", str(checkpoints["relu"]), "--limit", "8", "--no-progress", *(["-T", "2"] if "-T" not in extra else []), *extra]
    assert main(argv) == 2
    _one_line(capsys, message)


@pytest.mark.parametrize("command, extra, message", [
    ("evaluate", ["--per-channel"], "--per-channel applies to ReLU sources only"),
    ("evaluate", ["--calibration-images", "16"], "is a qcfs checkpoint and no --snn-calibration is given; drop --calibration-images"),
    ("compare", ["--calibration-images", "0", "--snn-calibration", "light"], "--calibration-images must be an integer >= 1, got 0"),
    ("compare", ["--per-channel"], "--per-channel applies to ReLU sources only"),
])
def test_cli_calibration_flags_that_would_change_nothing_are_refused_before_loading(checkpoints, command, extra, message, tmp_path,
                                                                                    capsys, monkeypatch):
    monkeypatch.setattr(snnconv.experiments, "load_evaluation", _forbidden)
    monkeypatch.setattr(snnconv.report, "load_evaluation", _forbidden)
    out = ["--out", str(tmp_path / "cmp")] if command == "compare" else []
    assert main([command, str(checkpoints["qcfs"]), "-T", "2", "--no-progress", *out, *extra]) == 2
    _one_line(capsys, message)


def test_cli_results_json_records_every_calibration_choice(checkpoints, tmp_path, capsys):
    cases = [
        (["--calibrate", "max", "--calibration-images", "40"], "relu",
         {"threshold": "max", "per_channel": False, "snn_calibration": None, "images": 40, "calibration_steps": None}),
        (["--calibrate", "mse", "--per-channel", "--snn-calibration", "bias", "--calibration-images", "64"], "relu",
         {"threshold": "mse", "per_channel": True, "snn_calibration": "bias", "images": 64, "calibration_steps": [2, 4],
          "target": "output"}),
        (["--calibrate", "mse", "--calibration-images", "64"], "relu",  # the MSE search alone is per T too
         {"threshold": "mse", "per_channel": False, "snn_calibration": None, "images": 64, "calibration_steps": [2, 4]}),
        (["--snn-calibration", "potential", "--calibration-images", "24"], "qcfs",  # trained thresholds: none set from data
         {"threshold": None, "per_channel": False, "snn_calibration": "potential", "images": 24, "calibration_steps": [2, 4],
          "target": "output"}),
    ]
    for extra, kind, expected in cases:
        path = tmp_path / f"{len(extra)}{kind}.json"
        assert main(["evaluate", str(checkpoints[kind]), "-T", "4,2", "--limit", "8", "--no-progress", "--json", str(path), *extra]) == 0
        run = json.loads(path.read_text())["runs"][0]
        cal = run["calibration"]
        assert {k: v for k, v in cal.items() if k != "per_T"} == expected, extra
        assert run["T"] == [2, 4]
        if expected["calibration_steps"]:  # one conversion per T, each with its own report
            assert set(cal["per_T"]) == {"2", "4"}
            for t, report in cal["per_T"].items():
                if expected["snn_calibration"] is None:
                    assert report == {}
                else:
                    assert (report["mode"], report["steps"], report["images"]) == (expected["snn_calibration"], int(t), expected["images"])
    assert "[SNNC potential]" in capsys.readouterr().out  # no 'theta None' in the table


def test_advanced_run_records_its_weight_calibration_settings():
    model, x = make_source("small_cnn", "relu", dtype=torch.float32, batch=24)
    y = model(x).argmax(1)
    spec = RunSpec("if", [2], calibration="max", snn_calibration="advanced",
                   options={"weight_calibration": {"iterations": 4, "learning_rate": 3e-4, "batch_size": 8}})
    record = evaluate_classification(model, x, y, spec, x, batch_size=12).record["calibration"]
    assert record["weight_calibration"] == {"iterations": 4, "learning_rate": 3e-4, "batch_size": 8, "objective": "clip"}
    assert record["snn_calibration"] == "advanced" and record["calibration_steps"] == [2] and record["images"] == 24
    assert record["per_T"]["2"]["passes"] == ["weights", "potential"]

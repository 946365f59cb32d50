"""ReLU sources: the theta/2 start, threshold selection (max, percentile, MSE; per channel),
SNN Calibration (bias, potential, weight), TPP and permutation on calibrated sources."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from snnconv import SnnconvError, convert, create_neuron, simulate
from snnconv.cli import main
from snnconv.convert import prepare
from snnconv.convert.calibrate import calibrate_thresholds
from snnconv.convert.layer_probe import mean_difference
from snnconv.convert.weight_calibration import WeightCalibration

from helpers import make_source


def relu_source(seed: int = 0, batch: int = 48):
    """small_cnn with ReLU activations, random BN statistics, float64, and 8x8 inputs."""
    model, _ = make_source("small_cnn", "relu", seed=seed, batch=1)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.rand(batch, 1, 8, 8, generator=g, dtype=torch.float64)
    return model, x


# ---------------------------------------------------------------- the theta/2 start


def test_if_and_gn_start_at_half_threshold_by_default():
    assert create_neuron("if").params.initial_potential == 0.5
    assert create_neuron("gn", 1.0, group_size=3).params.initial_potential == 0.5
    assert create_neuron("if", initial_potential=0.0).params.initial_potential == 0.0
    # constant input z over T steps: count = floor(T z / theta + 1/2), the rounding the shift buys
    z = torch.tensor([0.1, 0.24, 0.26, 0.5, 0.74, 0.9], dtype=torch.float64)
    out = create_neuron("if", 1.0)(z.expand(4, -1).unsqueeze(1).contiguous())
    assert out.sum(0).flatten().tolist() == torch.floor(4 * z + 0.5).tolist()


def test_relu_conversion_uses_half_threshold_start():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.fill_(1.0)
    x = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)[:, None]
    snn = convert(model, "if", calibration=x, threshold="max")
    assert [m.params.initial_potential for _, m in snn.spiking_layers()] == [0.5]
    out = simulate(snn, x, 4).sum(0)  # theta = 1: T * average = floor(4 x + 1/2)
    assert torch.equal(out.flatten(), torch.clamp(torch.floor(4 * x.flatten() + 0.5), 0, 4))


# ---------------------------------------------------------------- threshold selection


def _brute_force_mse(values: np.ndarray, levels: int, grid: np.ndarray) -> tuple[float, float]:
    """(theta, mse) minimising mean((a - theta/L * clip(floor(a L / theta + 1/2), 0, L))^2) on ``grid``."""
    best = (None, np.inf)
    for theta in grid:
        q = np.clip(np.floor(values * levels / theta + 0.5), 0, levels) * theta / levels
        err = float(np.mean((values - q) ** 2))
        if err < best[1]:
            best = (float(theta), err)
    return best


def _mse(values: np.ndarray, theta: float, levels: int) -> float:
    q = np.clip(np.floor(values * levels / theta + 0.5), 0, levels) * theta / levels
    return float(np.mean((values - q) ** 2))


@pytest.mark.parametrize("levels", [2, 4, 8])
def test_mse_search_finds_the_brute_force_minimiser(levels):
    # a tiny network whose activation we know: ReLU(w x + b) for known w, b, x
    g = torch.Generator().manual_seed(levels)
    model = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.5, -0.7]]))
        model[0].bias.fill_(0.2)
    x = torch.randn(400, 2, generator=g, dtype=torch.float64)
    acts = torch.relu(x @ torch.tensor([1.5, -0.7], dtype=torch.float64) + 0.2).numpy()
    snn = convert(model, "if", calibration=x, threshold="mse", calibration_steps=levels)
    theta = float(snn.spiking_layers()[0][1].threshold)
    grid = np.linspace(0.05 * acts.max(), acts.max(), 20001)
    best_theta, best_err = _brute_force_mse(acts, levels, grid)
    assert _mse(acts, theta, levels) <= best_err * (1 + 1e-4) + 1e-15
    assert abs(theta - best_theta) <= 0.01 * acts.max()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_per_channel_mse_and_max_match_each_channel_alone(seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 2)).double()
    x = torch.randn(30, 1, 6, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        acts = torch.relu(model[0](x))  # [30, 3, 4, 4]
    snn = convert(model, "if", calibration=x, threshold="mse", per_channel=True, calibration_steps=4)
    theta = snn.spiking_layers()[0][1].threshold
    assert theta.shape == (3, 1, 1)
    for c in range(3):
        values = acts[:, c].flatten().numpy()
        grid = np.linspace(0.05 * values.max(), values.max(), 8001)
        _, best_err = _brute_force_mse(values, 4, grid)
        assert _mse(values, float(theta[c]), 4) <= best_err * (1 + 1e-4) + 1e-15
    top = convert(model, "if", calibration=x, threshold="max", per_channel=True).spiking_layers()[0][1].threshold
    assert torch.allclose(top.flatten(), acts.amax(dim=(0, 2, 3)))


def test_percentile_per_channel_and_the_old_keyword():
    model, x = relu_source()
    a = convert(model, "if", calibration=x, threshold=99.0)
    b = convert(model, "if", calibration=x, calibration_method="99")  # the old name still works
    assert [float(m.threshold) for _, m in a.spiking_layers()] == [float(m.threshold) for _, m in b.spiking_layers()]
    c = convert(model, "if", calibration=x, threshold=90.0, per_channel=True)
    first = c.spiking_layers()[0][1].threshold
    assert first.shape == (32, 1, 1) and not torch.allclose(first, first.flatten()[0])  # one theta per channel
    assert c.calibration == {"threshold": 90.0, "per_channel": True, "snn_calibration": None, "calibration_steps": None, "images": 48}


# ---------------------------------------------------------------- SNN Calibration


def _ann_and_snn(model, x, neuron="if", steps=4, **options):
    graph = prepare(model)
    calibrate_thresholds(graph, x, "99.9")
    snn = convert(model, neuron, calibration=x, threshold="99.9", **options)
    return graph, snn, list(x.split(16))


@pytest.mark.parametrize("mode", ["bias", "potential"])
def test_bias_and_potential_calibration_reduce_every_layers_preactivation_error(mode):
    model, x = relu_source()
    steps = 4
    snn = convert(model, "if", calibration=x, snn_calibration=mode, calibration_steps=steps, calibration_target="preactivation")
    report = snn.calibration["snnc"]
    before, after = report["preactivation_mse_before"], report["preactivation_mse_after"]
    layers = list(before)
    assert before[layers[0]] == 0.0 and after[layers[0]] == 0.0  # static input: no error to fix
    for name in layers[1:]:
        assert before[name] > 1e-4, before
        assert after[name] < before[name], (name, before[name], after[name])
    # what the pass promises exactly: zero mean error on the calibration set afterwards,
    # per channel for BC, per neuron for PC (deterministic IF, earlier layers fixed first)
    graph = prepare(model)
    calibrate_thresholds(graph, x, "99.9")
    for name in layers[1:]:
        mean = mean_difference(graph, snn, list(x.split(32)), name, steps, 0, "preactivation")
        residual = mean.reshape(mean.shape[0], -1).mean(1) if mode == "bias" else mean
        assert float(residual.abs().max()) < 1e-9


@pytest.mark.parametrize("mode", ["bias", "potential"])
def test_output_calibration_shrinks_every_layers_mean_output_error(mode):
    # the authors' target (default): the layer's mean output; TPP's expected output is
    # linear in v(0) and the bias inside (0, T theta), so the correction lands
    model, x = relu_source(seed=1)
    graph = prepare(model)
    calibrate_thresholds(graph, x, "99.9")
    batches = list(x.split(16))
    plain = convert(model, "tpp", calibration=x)
    snn = convert(model, "tpp", calibration=x, snn_calibration=mode, calibration_steps=4)
    assert snn.calibration["snnc"]["target"] == "output"
    reduce = (lambda m: m.reshape(m.shape[0], -1).mean(1)) if mode == "bias" else (lambda m: m)
    for name, _ in snn.spiking_layers():
        before = float(reduce(mean_difference(graph, plain, batches, name, 4, 0)).pow(2).mean())
        after = float(reduce(mean_difference(graph, snn, batches, name, 4, 0)).pow(2).mean())
        assert after < 0.5 * before, (name, before, after)


def test_advanced_calibration_reduces_its_reconstruction_error():
    model, x = relu_source(seed=1)
    snn = convert(model, "if", calibration=x, snn_calibration="advanced", calibration_steps=4,
                  weight_calibration=WeightCalibration(iterations=300, learning_rate=1e-3, batch_size=16))
    report = snn.calibration["snnc"]
    assert report["passes"] == ["weights", "potential"]
    fitted = [r for r in report["weight_calibration"].values() if r["layer"] is not None]
    assert len(fitted) == 4
    for r in fitted[1:]:  # the objective it fits, and the quantised error the SNN sees, both fall
        assert r["objective_after"] < 0.8 * r["objective_before"], r
        assert r["kept"] and r["error_after"] < r["error_before"], r
    assert all(r["error_after"] <= r["error_before"] for r in fitted)


def test_calibrated_sources_run_with_tpp_and_permutation():
    model, x = relu_source(seed=2)
    for neuron, permute in (("tpp", None), ("if", "per-neuron")):
        snn = convert(model, neuron, calibration=x, snn_calibration="light", calibration_steps=4, permute=permute,
                      calibration_target="preactivation")
        report = snn.calibration["snnc"]
        before, after = report["preactivation_mse_before"], report["preactivation_mse_after"]
        assert all(after[n] < before[n] for n in list(before)[1:]), (neuron, before, after)
        out = simulate(snn, x[:8], 4)
        assert out.shape == (4, 8, 10) and torch.isfinite(out).all()
    # potential calibration reaches TPP's phase 1: the offset is in its u
    tpp = convert(model, "tpp", calibration=x, snn_calibration="potential", calibration_steps=4)
    assert all(m.offset is not None for _, m in tpp.spiking_layers())



class _TokenNet(nn.Module):
    """Linear layers on tokens [B, N, F], optionally Linear -> BatchNorm1d(N) (normalises N)."""

    def __init__(self, tokens: int, features: int, batchnorm: bool = False):
        super().__init__()
        self.embed, self.mix, self.head = nn.Linear(features, features), nn.Linear(features, features), nn.Linear(features, 3)
        self.norm = nn.BatchNorm1d(tokens) if batchnorm else nn.Identity()
        if batchnorm:
            self.norm.running_mean.uniform_(-0.5, 0.5)
            self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = torch.relu(self.embed(x))
        return self.head(torch.relu(self.norm(self.mix(h))).mean(1))


@pytest.mark.parametrize("tokens, features", [(5, 7), (7, 7)])
def test_bias_calibration_shifts_a_linear_layer_along_its_features_on_tokens(tokens, features):
    # a Linear's channels are its last dim: with N != F the shift along the tokens did not
    # fit the bias (a raw RuntimeError); with N == F it was added along the wrong axis
    torch.manual_seed(0)
    model = _TokenNet(tokens, features).double().eval()
    x = torch.randn(64, tokens, features, dtype=torch.float64)
    snn = convert(model, "if", calibration=x, snn_calibration="bias", calibration_steps=4,
                  calibration_target="preactivation")
    graph = prepare(model)
    calibrate_thresholds(graph, x, "99.9")
    name = list(snn.calibration["snnc"]["layers"])[1]
    assert snn.calibration["snnc"]["layers"][name] == "bias of mix"
    mean = mean_difference(graph, snn, list(x.split(32)), name, 4, 0, "preactivation")
    assert mean.shape == (tokens, features)
    assert float(mean.mean(0).abs().max()) < 1e-9  # zero per feature, the bias's axis
    assert float(mean.abs().max()) > 1e-4  # not trivially: the tokens keep their own errors


@pytest.mark.parametrize("mode", ["light", "advanced", "bias"])
def test_linear_batchnorm_on_tokens_refuses_bias_and_weight_calibration(mode):
    # BatchNorm1d(N) on [B, N, F] normalises N, so the pair runs unfolded: calibrating its
    # folded bias or weights would change nothing (it did, silently, before)
    torch.manual_seed(0)
    model = _TokenNet(7, 7, batchnorm=True).eval()
    x = torch.randn(32, 7, 7)
    with pytest.raises(SnnconvError) as err:
        convert(model, "if", calibration=x, snn_calibration=mode, calibration_steps=4)
    assert _one_line(err).startswith(f"snn_calibration={mode!r} cannot calibrate 'mix': it is a Linear followed by BatchNorm1d on tokens")
    snn = convert(model, "if", calibration=x, snn_calibration="potential", calibration_steps=4)
    assert snn.calibration["snnc"]["passes"] == ["potential"]


def test_linear_batchnorm_on_features_is_calibrated():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.BatchNorm1d(12), nn.ReLU(),
                          nn.Linear(12, 3)).double().eval()
    model[4].running_mean.uniform_(-0.5, 0.5)
    x = torch.rand(128, 1, 4, 4, dtype=torch.float64)
    before = convert(model, "if", calibration=x)
    snn = convert(model, "if", calibration=x, snn_calibration="bias", calibration_steps=4)
    assert snn.calibration["snnc"]["layers"]["site_1"] == "bias of 3"
    assert not torch.equal(snn(x, 4), before(x, 4))


# ---------------------------------------------------------------- bad input


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("data, kwargs, words", [
    (lambda x: (x * 255).to(torch.uint8), {}, "is torch.uint8, not floating point"),
    (lambda x: x.repeat(1, 3, 1, 1), {}, "has 3 channels (dim 1) but layer '0.0' (Conv2d) takes 1"),
    (lambda x: x[:, 0], {}, "takes [batch, 1, ...] with 4 dims"),
    (lambda x: torch.rand(4, 1, 2, 2, dtype=torch.float64), {}, "does not fit the model"),
    (lambda x: torch.where(torch.arange(x.numel()).reshape(x.shape) == 5, torch.nan, x), {}, "NaN"),
    (lambda x: x[:5], {"threshold": 99.9, "per_channel": True}, "percentile needs at least 1000"),
    (lambda x: x[:0], {}, "empty"),
    (lambda x: x, {"threshold": "mse"}, "calibration_steps"),
    (lambda x: x, {"snn_calibration": "light"}, "calibration_steps"),
    (lambda x: x, {"snn_calibration": "fancy", "calibration_steps": 4}, "snn_calibration must be"),
    (lambda x: x, {"calibration_images": 0}, "integer >= 1"),
])
def test_bad_calibration_data_is_one_line_and_changes_nothing(data, kwargs, words):
    model, x = relu_source()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SnnconvError) as err:
        convert(model, "if", calibration=data(x), **kwargs)
    assert words in _one_line(err)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_snn_calibration_needs_data_and_a_neuron_it_can_calibrate():
    model, x = relu_source()
    with pytest.raises(SnnconvError, match="needs calibration images"):
        convert(model, "if", snn_calibration="light", calibration_steps=4)
    with pytest.raises(SnnconvError, match="snn_calibration works with the if, gn, tpp neurons, not 'cif'"):
        convert(model, "cif", calibration=x, snn_calibration="light", calibration_steps=4)
    with pytest.raises(SnnconvError, match="weight calibration iterations must be an integer >= 1, got 0"):
        convert(model, "if", calibration=x, snn_calibration="advanced", calibration_steps=4, weight_calibration={"iterations": 0})


def test_nir_export_refuses_what_it_cannot_carry(tmp_path):
    pytest.importorskip("nir")
    from snnconv.export.nir import export_nir

    model, x = relu_source()
    for kwargs, words in (({"per_channel": True, "threshold": "max"}, "the NIR export folds one"),
                          ({"snn_calibration": "potential", "calibration_steps": 4}, "per-neuron v(0)")):
        snn = convert(model, "if", calibration=x, **kwargs)
        with pytest.raises(SnnconvError, match=words.replace("(", r"\(").replace(")", r"\)")):
            export_nir(snn, tmp_path / "n.nir", (1, 8, 8))


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def relu_digits_checkpoint(tmp_path_factory):
    from snnconv.train import TrainConfig, train

    out = tmp_path_factory.mktemp("relu_digits")
    config = TrainConfig(model="small_cnn", dataset="digits", activation="relu", epochs=8, batch_size=64, seed=0,
                         model_args={"width": 8})
    train(config, out, progress=False, log=lambda m: None)
    return out / "checkpoint.safetensors"


def test_snnc_beats_plain_conversion_on_a_trained_source(relu_digits_checkpoint):
    from snnconv.checkpoint import load_checkpoint
    from snnconv.data import load_dataset

    model, _ = load_checkpoint(relu_digits_checkpoint)
    cal = load_dataset("digits", "train").normalized(slice(0, 256))
    test = load_dataset("digits", "test")
    x, y = test.normalized(), test.labels
    ann = float((model(x).argmax(1) == y).double().mean())
    acc = {}
    for mode, threshold in ((None, 99.9), ("light", "mse"), ("advanced", "mse")):
        snn = convert(model, "if", calibration=cal, threshold=threshold, snn_calibration=mode, calibration_steps=2,
                      weight_calibration={"iterations": 200, "learning_rate": 1e-3})
        acc[mode] = float((simulate(snn, x, 2).mean(0).argmax(1) == y).double().mean())
    assert ann > 0.9, ann
    # measured: ANN 94.9, plain 80.4, light 88.2, advanced 90.9 (%, T = 2)
    assert acc["light"] > acc[None] + 0.04 and acc["advanced"] > acc[None] + 0.04, (ann, acc)


def test_cli_evaluate_records_every_calibration_choice(relu_digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["evaluate", str(relu_digits_checkpoint), "-T", "2,4", "--calibrate", "mse", "--per-channel",
            "--snn-calibration", "light", "--calibration-images", "64", "--limit", "60", "--no-progress", "--json", str(out)]
    assert main(argv) == 0
    assert "SNNC light" in capsys.readouterr().out
    run = json.loads(out.read_text())["runs"][0]
    cal = run["calibration"]
    assert {k: cal[k] for k in ("threshold", "per_channel", "snn_calibration", "images")} == {
        "threshold": "mse", "per_channel": True, "snn_calibration": "light", "images": 64}
    assert set(cal["per_T"]) == {"2", "4"} and run["T"] == [2, 4]
    for report in cal["per_T"].values():
        assert report["passes"] == ["bias"] and report["seconds"]["bias"] > 0
    assert main(["evaluate", str(relu_digits_checkpoint), "--calibrate", "mse", "--snn-calibration", "light",
                 "--calibration-images", "-3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--calibration-images must be an integer >= 1" in err and err.count("\n") == 1

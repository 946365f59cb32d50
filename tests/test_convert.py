"""Conversion passes (structure and numbers) and whole-network exactness of GN and CIF."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snnconv import QCFS, ClipFloor, SnnconvError, convert, create_model, running_average, simulate, swap_relu
from snnconv.convert import activation_sites, fold_batchnorm, prepare, remove_dropout, trace

from helpers import make_source, randomize_batchnorm


def test_fold_batchnorm_preserves_outputs_and_removes_bn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 25, 6), nn.BatchNorm1d(6))
    randomize_batchnorm(model, torch.Generator().manual_seed(1))
    model.eval()
    x = torch.randn(4, 3, 5, 5)
    folded = fold_batchnorm(trace(model))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_batchnorm_that_cannot_fold_becomes_a_per_channel_affine_layer():
    from snnconv.convert.fold_bn import ChannelAffine

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return F.relu(self.bn(y) + y)

    model = Odd().eval()
    randomize_batchnorm(model, torch.Generator().manual_seed(0))
    folded = fold_batchnorm(trace(model))
    assert isinstance(folded.bn, ChannelAffine)
    x = torch.randn(3, 1, 6, 6)
    assert torch.allclose(folded(x), model(x), atol=1e-6)
    with pytest.raises(SnnconvError, match="BatchNorm 'bn' has no running statistics"):
        model.bn = nn.BatchNorm2d(2, track_running_stats=False)
        fold_batchnorm(trace(model))


def test_remove_dropout():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.ReLU(), nn.Linear(4, 2)).eval()
    gm = remove_dropout(trace(model))
    assert not any(isinstance(m, nn.Dropout) for m in gm.modules())
    x = torch.randn(3, 4)
    assert torch.equal(gm(x), model(x))


def test_identity_placeholders_go_so_batchnorm_folds_through_them():
    # timm-style `self.norm = nn.Identity()` between a conv and its BN must not block the fold
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Identity(), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    randomize_batchnorm(model, torch.Generator().manual_seed(0))
    model.eval()
    graph = prepare(model)
    kinds = [type(m) for m in graph.modules()]
    assert nn.Identity not in kinds and not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert not any(type(m).__name__ == "ChannelAffine" for m in graph.modules())  # folded, not kept as an affine
    x = torch.randn(5, 1, 4, 4)
    assert torch.allclose(graph(x), model(x), atol=1e-6)


class FunctionalNet(nn.Module):
    """Activations written as functions, a residual addition, concatenation and upsampling."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        y = F.relu(self.a(x))
        z = torch.relu(self.b(y)) + y
        z = torch.clamp(z, 0, 2.0)
        w = F.interpolate(F.avg_pool2d(z, 2), scale_factor=2, mode="nearest")
        u = self.c(torch.cat([z, w], dim=1)).relu()
        return self.head(torch.flatten(u, 1))


def test_functional_activations_are_found():
    gm = prepare(FunctionalNet())
    kinds = [s.kind for _, s in activation_sites(gm)]
    assert kinds == ["relu", "relu", "clip", "relu"]


def test_relu_without_calibration_is_an_error_and_calibration_fixes_it():
    model = FunctionalNet().eval()
    with pytest.raises(SnnconvError, match="no threshold.*calibration"):
        convert(model, "if")
    x = torch.rand(16, 1, 8, 8)
    snn = convert(model, "if", calibration=x, calibration_method="max")
    thresholds = [float(m.threshold) for _, m in snn.spiking_layers()]
    assert thresholds[2] == 2.0 and all(t > 0 for t in thresholds)
    # with max-calibrated thresholds and many steps, the rate code approaches the ANN
    out = running_average(snn(x, 256))[-1]
    ann = model(x)
    assert (out - ann).abs().max() < 0.1 * ann.abs().max()


def test_percentile_calibration_is_below_max():
    model = FunctionalNet().eval()
    x = torch.rand(16, 1, 8, 8)
    t_max = [float(m.threshold) for _, m in convert(model, "if", calibration=x, calibration_method="max").spiking_layers()]
    t_pct = [float(m.threshold) for _, m in convert(model, "if", calibration=x, calibration_method=99.0).spiking_layers()]
    assert all(p <= m for p, m in zip(t_pct, t_max)) and t_pct[0] < t_max[0]


@pytest.mark.parametrize(
    "layer,match",
    [
        (nn.GELU(), r"layer '2' \(GELU\) has no faithful spiking form"),
        (nn.MaxPool2d(2), r"layer '2' \(MaxPool2d after a spiking layer\) has no faithful spiking form: max pooling is exact only"),
        (nn.Sigmoid(), r"layer '2' \(Sigmoid\) has no faithful spiking form"),
    ],
)
def test_unsupported_layers_are_named(layer, match):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), QCFS(4), layer, nn.Flatten())
    with pytest.raises(SnnconvError, match=match):
        convert(model, "if")


def test_lstm_is_refused():
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.act = nn.LSTM(4, 4), QCFS(4)

        def forward(self, x):
            return self.act(self.lstm(x)[0])

    with pytest.raises(SnnconvError, match=r"layer 'lstm' \(LSTM\) has no faithful spiking form"):
        convert(Recurrent(), "if")


def test_model_without_activation_is_refused():
    with pytest.raises(SnnconvError, match="the model has no activation to convert: add ReLU, QCFS or ClipFloor"):
        convert(nn.Linear(3, 2), "if")


def test_convert_does_not_modify_the_input_model():
    model, x = make_source("small_cnn", "qcfs", dtype=torch.float32)
    before = copy.deepcopy(model.state_dict())
    structure = str(model)
    convert(model, "gn", group_size=4)
    assert str(model) == structure
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_swap_relu_handles_modules_and_functions():
    swapped = swap_relu(FunctionalNet(), "qcfs", levels=8)
    assert sum(isinstance(m, QCFS) for m in swapped.modules()) == 3  # three relus; the clamp stays
    seq = swap_relu(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), "clipfloor", levels=4)
    assert isinstance(seq[1], ClipFloor)


@pytest.mark.parametrize("name", ["small_cnn", "resnet20"])
def test_gn_with_tau_equal_L_gives_the_ann_logits_at_T1(name):
    size, channels = (8, 1) if name == "small_cnn" else (32, 3)
    model, x = make_source(name, "qcfs", levels=4, in_channels=channels, size=size, dtype=torch.float32)
    out = convert(model, "gn", group_size=4)(x, 1)
    assert out.shape == (1, x.shape[0], 10)
    assert torch.allclose(out[0], model(x), atol=1e-5)


@pytest.mark.parametrize("name", ["small_cnn", "resnet20"])
def test_cif_wake_sleep_reproduces_the_ann_exactly(name):
    size, channels = (8, 1) if name == "small_cnn" else (16, 3)
    levels, sleep = 4, 32  # about T + depth sleep steps suffice (methods.md section 5)
    model, x = make_source(name, "clipfloor", levels=levels, in_channels=channels, size=size, batch=3)
    ann = model(x)
    snn = convert(model, "cif")
    readout = running_average(snn(x, levels, sleep_steps=sleep), wake_steps=levels)
    assert torch.allclose(readout[-1], ann, atol=1e-9)
    # without the sleep phase the match is lost (the test is not trivially true)
    assert (readout[levels - 1] - ann).abs().max() > 1e-3
    for ablation in ({"negative_spikes": False}, {"spike_cap": False}):
        broken = running_average(convert(model, "cif", **ablation)(x, levels, sleep_steps=sleep), wake_steps=levels)
        assert (broken[-1] - ann).abs().max() > 1e-4, ablation


def test_if_snn_converges_to_the_clip_limit_as_one_over_T():
    """methods.md sections 1-2: IF's average output tends to the clip-limit network
    lambda * clip(z / lambda, 0, 1). In the first spiking layer (constant input) the count is
    exactly round(T z / theta) clipped, so its average is within theta / (2T) of the clip;
    the whole network's error shrinks as 1/T: err(T) <= 2 * 4 err(4) / T for T >= 16."""
    from snnconv.activations import clip_limit

    model, x = make_source("small_cnn", "qcfs", levels=4, batch=32)
    snn = convert(model, "if")
    (first, neuron), = snn.spiking_layers()[:1]
    windows = {}

    class Keep:
        def record(self, name, neuron, out):
            windows[name] = out.clone()

    handle = neuron.register_forward_pre_hook(lambda m, args: windows.__setitem__("z", args[0][0].clone()))
    try:  # one chunk: the recorder and the hook see the whole batch
        avg = running_average(simulate(snn, x, 128, recorder=Keep(), window_bytes=None, memory_budget=1 << 40))
    finally:
        handle.remove()
    limit = clip_limit(model)(x)
    # first layer: exact bound, every neuron and every T (its input z is the same every step)
    theta = float(neuron.threshold)
    first_avg = windows[first].cumsum(0) / torch.arange(1, 129, dtype=x.dtype).view(-1, 1, 1, 1, 1)
    clip = windows["z"].clamp(0, theta)
    for t in (1, 4, 16, 64, 128):
        assert (first_avg[t - 1] - clip).abs().max() <= theta / (2 * t) + 1e-12, t
    # whole network: first-order convergence to the clip limit
    err = {t: (avg[t - 1] - limit).abs().mean().item() for t in (1, 4, 16, 64, 128)}
    assert err[128] < err[64] < err[16] < err[4] < err[1]
    for t in (16, 64, 128):
        assert err[t] <= 2 * 4 * err[4] / t, (t, err)
    # at T = L the SNN already beats T = 1 against the QCFS ANN by a factor of three
    ann = model(x)
    assert (avg[3] - ann).abs().mean() < (avg[0] - ann).abs().mean() / 3

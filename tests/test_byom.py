"""Bring your own model: models written the way researchers write them convert to the
right numbers, or are refused with one line naming the user's module and the fix.

Exactness references: a group neuron with tau = L at T = 1 computes the QCFS ANN
exactly (methods.md section 2); CIF with T = L wake steps and enough sleep steps ends
at the clip-floor ANN exactly (section 5).
"""
from __future__ import annotations

import gzip
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import shared_data, spread_positive_thresholds
from snnconv import ClipFloor, QCFS, convert, simulate, swap_relu
from snnconv.data import load_dataset
from snnconv.errors import SnnconvError
from snnconv.metrics import running_average

L = 4


def _spread(model, x):
    """Data-spread lambdas (see helpers.spread_thresholds), kept positive."""
    return spread_positive_thresholds(model, x)


def _gn_t1(model, x, **kw):
    """The SNN output at T = 1 with a group neuron of tau = L (exact for a QCFS source)."""
    return convert(model, "gn", group_size=L, **kw)(x, 1)


def _cif_readout(model, x, sleep=32, **kw):
    """CIF wake-sleep readout after T = L wake and ``sleep`` sleep steps."""
    out = convert(model, "cif", **kw)(x, L, sleep_steps=sleep)
    return running_average(out, wake_steps=L)


# 1. parameters used by F.linear / F.conv2d are not time windows ---------------------

class OwnParameters(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv_w = nn.Parameter(torch.randn(4, 1, 3, 3, generator=g) * 0.5)
        self.conv_b = nn.Parameter(torch.randn(4, generator=g) * 0.1)
        self.act = QCFS(L, threshold=1.0)
        self.W = nn.Parameter(torch.randn(5, 4 * 6 * 6, generator=g) * 0.1)
        self.b = nn.Parameter(torch.randn(5, generator=g))
        self.register_buffer("offset", torch.linspace(-0.5, 0.5, 5))

    def forward(self, x):
        h = self.act(F.conv2d(x, self.conv_w, self.conv_b))
        return F.linear(h.flatten(1), self.W, self.b) + self.offset


def test_own_parameters_are_not_repeated_over_time():
    model = OwnParameters().eval()
    x = torch.rand(3, 1, 8, 8)
    _spread(model, x)
    ann = model(x)
    out = _gn_t1(model, x)
    assert out.shape == (1, 3, 5)
    assert torch.allclose(out[0], ann, atol=1e-5)
    window = convert(model, "if")(x, 6)
    assert window.shape == (6, 3, 5)  # not [6, 3, 5 * 6]


# 2. every constant drive is off in sleep --------------------------------------------

class AddedConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act1, self.act2 = ClipFloor(L), ClipFloor(L)
        self.shift = nn.Parameter(torch.linspace(-0.2, 0.2, 4).view(1, 4, 1, 1))
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        y = self.act1(self.a(x))
        z = self.act2(self.b(y) + 0.3 + self.shift)
        return self.head(z.flatten(1)) - 0.1


def test_cif_constants_are_off_in_sleep():
    torch.manual_seed(0)
    model = AddedConstant().double().eval()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    _spread(model, x)
    ann = model(x)
    readout = _cif_readout(model, x)
    assert torch.allclose(readout[-1], ann, atol=1e-9)
    assert (readout[L - 1] - ann).abs().max() > 1e-3  # the sleep phase is what makes it exact


# 3. Linear over tokens [B, N, C] and on channels-last tensors ------------------------

class Tokens(nn.Module):
    def __init__(self, tokens, channels):
        super().__init__()
        self.mix, self.act, self.head = nn.Linear(channels, channels), ClipFloor(L), nn.Linear(channels, 3)
        self.tokens = tokens

    def forward(self, x):  # x [B, N, C]
        return self.head(self.act(self.mix(x))).mean(1)


class ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act1 = nn.Conv2d(2, 4, 3, padding=1), ClipFloor(L)
        self.mix, self.act2, self.head = nn.Linear(4, 4), ClipFloor(L), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = self.act1(self.conv(x)).permute(0, 2, 3, 1)  # [B, H, W, C]
        return self.head(self.act2(self.mix(h)).flatten(1))


@pytest.mark.parametrize("model,shape", [(Tokens(4, 4), (4, 4)), (Tokens(6, 4), (6, 4)), (ChannelsLast(), (2, 4, 4))])
def test_cif_linear_bias_along_the_last_dim(model, shape):
    torch.manual_seed(1)
    model = model.double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.bias.uniform_(-0.5, 0.5)
    x = torch.rand(4, *shape, dtype=torch.float64)
    _spread(model, x)
    ann = model(x)
    readout = _cif_readout(model, x)
    assert torch.allclose(readout[-1], ann, atol=1e-9)


# 4. dropout of every spelling, whatever mode the source is in ------------------------

class Dropouts(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 5)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()
        self.drop = nn.Dropout2d(0.3)

    def forward(self, x):
        h = F.dropout(self.act1(self.a(x)), 0.5, self.training)
        h = torch.dropout(h, 0.2, self.training)
        h = self.drop(F.dropout2d(self.b(h), p=0.1, training=self.training))
        h = F.alpha_dropout(F.relu(h), 0.1, training=self.training)  # a functional ReLU: swap_relu traces
        return self.c(h.flatten(1))


def test_dropout_vanishes_whatever_the_mode():
    torch.manual_seed(2)
    source = swap_relu(Dropouts().train(), "qcfs", levels=L)
    # swap_relu traced a train-mode model: its dropout still follows train()/eval()
    x = torch.rand(4, 1, 8, 8)
    assert not torch.equal(source(x), source(x))
    source.eval()
    assert torch.equal(source(x), source(x))
    _spread(source, x)
    ann = source(x)
    source.train()  # converted while in train mode
    out = _gn_t1(source, x)
    assert torch.allclose(out[0], ann, atol=1e-5)
    assert source.training  # the model itself is untouched
    graph = convert(source, "gn", group_size=L).graph
    assert not any("dropout" in str(n.target) for n in graph.graph.nodes)


def test_always_on_functional_dropout_is_removed_too():
    """F.dropout(x, p) defaults to training=True: random even in eval mode in the ANN,
    gone in the SNN (which then computes the ANN without dropout)."""
    model = nn.Sequential(nn.Linear(4, 6), QCFS(L, threshold=1.0), nn.Linear(6, 2)).eval()

    class AlwaysOn(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net[2](F.dropout(self.net[1](self.net[0](x)), 0.4))

    x = torch.randn(5, 4)
    assert torch.allclose(_gn_t1(AlwaysOn(), x)[0], model(x), atol=1e-5)


# 5. MNIST files given as Fashion-MNIST (same names) are refused ---------------------

def test_wrong_dataset_in_folder_is_refused(tmp_path):
    mnist = shared_data("MNIST", "raw")
    with pytest.raises(SnnconvError, match="holds MNIST, not FashionMNIST .its md5 is MNIST's.: point --data-dir"):
        load_dataset("fashion_mnist", "test", mnist)
    # the same content compressed again (md5 no longer the published one): told apart by its statistics
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(mnist / name) as src, gzip.open(tmp_path / name, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst)
    with pytest.raises(SnnconvError, match="mean intensity 0.1325 is MNIST's"):
        load_dataset("fashion_mnist", "test", tmp_path)
    assert load_dataset("mnist", "test", tmp_path).images.shape == (10000, 1, 28, 28)


# 6. a ReLU module reused at several places ------------------------------------------

class ReusedRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.c(self.relu(self.b(self.relu(self.a(x)))))


def test_reused_relu_gets_one_activation_per_call_site():
    torch.manual_seed(3)
    model = ReusedRelu().eval()
    swapped = swap_relu(model, "qcfs", levels=L, threshold=1.0)
    sites = [m for m in swapped.modules() if isinstance(m, QCFS)]
    assert len(sites) == 2 and sites[0] is not sites[1]
    with torch.no_grad():
        sites[0].threshold.fill_(0.5)
        sites[1].threshold.fill_(2.0)
    x = torch.randn(7, 6)
    expected = model.c(QCFS(L, 2.0)(model.b(QCFS(L, 0.5)(model.a(x)))))
    assert torch.allclose(swapped(x), expected, atol=1e-6)
    assert torch.allclose(_gn_t1(swapped, x)[0], expected, atol=1e-5)


# 7. custom activation modules --------------------------------------------------------

class _FloorSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class PaperQCFS(nn.Module):
    """QCFS as the paper's code writes it: clamp(floor(x / up * t + 0.5) / t, 0, 1) * up."""

    def __init__(self, t=4, up=8.0):
        super().__init__()
        self.t = t
        self.up = nn.Parameter(torch.tensor(up))

    def forward(self, x):
        x = x / self.up
        x = torch.clamp(_FloorSTE.apply(x * self.t + 0.5) / self.t, 0, 1)
        return x * self.up


class WhereClip(nn.Module):
    """clip(x, 0, 1) written with torch.where."""

    def forward(self, x):
        x = torch.where(x < 0, torch.zeros_like(x), x)
        return torch.where(x > 1, torch.ones_like(x), x)


class PaperNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 3)
        self.act1, self.act2 = PaperQCFS(L, 1.3), PaperQCFS(L, 0.9)

    def forward(self, x):
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).flatten(1))


def test_custom_activation_is_named_and_mapped():
    torch.manual_seed(4)
    model = PaperNet().eval()
    x = torch.rand(6, 1, 8, 8)
    with pytest.raises(SnnconvError) as err:
        convert(model, "gn", group_size=L)
    assert str(err.value).startswith("module 'act1' (PaperQCFS) computes function floor, which has no spiking form: "
                                     "if PaperQCFS is an activation, map it to a supported one, convert(model, neuron, "
                                     "activations={PaperQCFS: lambda m: QCFS(levels=..., threshold=...)})")
    mapping = {PaperQCFS: lambda m: QCFS(levels=m.t, threshold=m.up.item())}
    out = _gn_t1(model, x, activations=mapping)
    assert torch.allclose(out[0], model(x), atol=1e-5)
    from snnconv.insight import layerwise_error

    errors = layerwise_error(model, convert(model, "gn", group_size=L, activations=mapping), x, 1, activations=mapping)
    assert list(errors) == ["site_0", "site_1"] and max(e[0] for e in errors.values()) < 1e-10
    # a mapping that reads the wrong levels computes another function: refused, not converted
    with pytest.raises(SnnconvError, match=r"activations mapping for 'act1' \(PaperQCFS\) gives QCFS that computes a different function"):
        convert(model, "gn", activations={PaperQCFS: lambda m: QCFS(levels=2 * m.t, threshold=m.up.item())})


def test_where_clip_is_named_and_mapped_to_hardtanh():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 8), WhereClip(), nn.Linear(8, 2)).eval()
    with pytest.raises(SnnconvError, match=r"^module '1' \(WhereClip\) computes function lt"):
        convert(model, "if")
    x = torch.randn(64, 5)
    snn = convert(model, "if", activations={WhereClip: lambda m: nn.Hardtanh(0.0, 1.0)})
    avg = running_average(snn(x, 256))[-1]
    assert (avg - model(x)).abs().max() < 0.02  # rate code of clip(x, 0, 1), theta = 1


# 8. forward() that reads sizes -------------------------------------------------------

class ReadsSizes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act, self.fc = nn.Conv2d(1, 4, 3, padding=1), QCFS(L, 1.0), nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        n = x.shape[0]
        h = self.act(self.conv(x))
        a = h.reshape(n, -1)
        b = h.view(x.size(0), 4, -1).flatten(1)
        c = h.reshape(x.size()[0], -1)
        d = h.reshape(n * 4, -1).reshape(n, -1)  # an integer multiple of the batch follows it too
        return self.fc(a) + self.fc(b) - self.fc(c) + self.fc(d) - self.fc(h.flatten(1))


def test_sizes_read_in_forward_follow_the_batch():
    torch.manual_seed(6)
    model = ReadsSizes().eval()
    x = torch.rand(3, 1, 8, 8)
    _spread(model, x)
    reference = nn.Sequential(model.conv, model.act, nn.Flatten(), model.fc).eval()
    for steps in (1, 2, 5):
        assert torch.equal(convert(model, "if")(x, steps), convert(reference, "if")(x, steps))
    assert torch.allclose(_gn_t1(model, x)[0], model(x), atol=1e-5)


# 9. several outputs ------------------------------------------------------------------

class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(1, 4, 3, padding=1), QCFS(L, 1.0)
        self.cls, self.box = nn.Linear(4 * 8 * 8, 3), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.act(self.conv(x))
        return {"classes": self.cls(h.flatten(1)), "boxes": (self.box(h), self.box(h).mean((2, 3))),
                "strides": self.box.weight[:, 0, 0, 0], "stride": 8, "none": None}


def test_several_outputs_keep_their_structure():
    torch.manual_seed(7)
    model = TwoHeads().eval()
    x = torch.rand(5, 1, 8, 8)
    _spread(model, x)
    ann = model(x)
    out = _gn_t1(model, x)
    assert set(out) == {"classes", "boxes", "strides", "stride", "none"}
    assert out["strides"] is model.box.weight[:, 0, 0, 0] or torch.equal(out["strides"], model.box.weight[:, 0, 0, 0])
    assert out["stride"] == 8 and out["none"] is None
    assert out["classes"].shape == (1, 5, 3) and out["boxes"][0].shape == (1, 5, 2, 8, 8) and out["boxes"][1].shape == (1, 5, 2)
    assert torch.allclose(out["classes"][0], ann["classes"], atol=1e-5)
    assert torch.allclose(out["boxes"][0][0], ann["boxes"][0], atol=1e-5)
    # chunked (one sample per chunk) gives the same structure and numbers
    chunked = simulate(convert(model, "if"), x, 4, window_bytes=1)
    whole = simulate(convert(model, "if"), x, 4, window_bytes=None)
    assert torch.allclose(chunked["boxes"][1], whole["boxes"][1], atol=1e-6) and chunked["boxes"][1].shape == (4, 5, 2)
    assert chunked["strides"].shape == (2,) and chunked["stride"] == 8  # constants are not joined over chunks
    readout = running_average(whole)
    assert readout["classes"].shape == (4, 5, 3)


# 10. max pooling ---------------------------------------------------------------------

def test_max_pool_on_the_analog_input_is_exact_and_refused_after_spikes():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), QCFS(L, 1.0), nn.Flatten(), nn.Linear(64, 3)).eval()
    x = torch.rand(4, 1, 8, 8)
    _spread(model, x)
    assert torch.allclose(_gn_t1(model, x)[0], model(x), atol=1e-5)
    after = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), QCFS(L, 1.0), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(SnnconvError) as err:
        convert(after, "if")
    assert str(err.value) == (
        "layer '2' (MaxPool2d after a spiking layer) has no faithful spiking form: max pooling is exact only on the "
        "analog input, before the first activation: move it there, convert with max_pool='gate' (an approximate "
        "spiking max, Rueckauer et al. 2017), or replace it by average pooling (nn.AvgPool2d, same kernel) and retrain "
        "the source ANN"
    )


def test_max_pool_gate_after_spikes_approaches_the_ann():
    """max_pool='gate' (Rueckauer et al. 2017): exact at T = 1 with GN tau = L (the
    leader is the largest input), and IF's rate error falls with T, far below the
    error of swapping the max pools for average pools."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), QCFS(8, 1.0), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                          QCFS(8, 1.0), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()
    x = torch.rand(64, 1, 16, 16)
    _spread(model, x)
    ann = model(x).detach()
    exact = convert(model, "gn", group_size=8, max_pool="gate")(x, 1)
    assert torch.allclose(exact[0], ann, atol=1e-5)
    rel = lambda out: float(((running_average(out)[-1] - ann) ** 2).sum() / (ann ** 2).sum())  # noqa: E731
    snn = convert(model, "if", max_pool="gate")
    errors = [rel(snn(x, steps)) for steps in (4, 16, 64)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.005  # measured 0.0285, 0.0074, 0.0032
    swapped = nn.Sequential(*[nn.AvgPool2d(2) if isinstance(m, nn.MaxPool2d) else m for m in model])
    assert rel(convert(swapped, "if")(x, 64)) > 10 * errors[2]  # measured 0.146
    with pytest.raises(SnnconvError, match="max_pool='gate' follows running spike counts"):
        convert(model, "cif", max_pool="gate")


# 11. BatchNorm anywhere --------------------------------------------------------------

class BatchNormPlaces(nn.Module):
    """BN after average pooling, after an activation (pre-activation block), after a
    residual addition, and after a conv whose output is also used elsewhere."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.bn_pool, self.bn_act, self.bn_add, self.bn_shared = (nn.BatchNorm2d(4) for _ in range(4))
        self.act1, self.act2, self.act3 = ClipFloor(L), ClipFloor(L), ClipFloor(L)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        y = self.act1(self.a(x))
        z = self.act2(self.b(self.bn_act(y)))                 # BN after the activation
        s = self.c(z)
        u = self.act3(self.bn_add(z + self.bn_shared(s) + s))  # BN after a residual add; s used twice
        return self.fc(self.bn_pool(F.avg_pool2d(u, 2)).flatten(1))  # BN after pooling


def test_batchnorm_in_every_place_matches_the_ann():
    from helpers import randomize_batchnorm

    torch.manual_seed(9)
    model = BatchNormPlaces().double().eval()
    randomize_batchnorm(model, torch.Generator().manual_seed(9))
    x = torch.rand(4, 2, 8, 8, dtype=torch.float64)
    _spread(model, x)
    ann = model(x)
    readout = _cif_readout(model, x, sleep=48)
    assert torch.allclose(readout[-1], ann, atol=1e-9)  # every BN shift is off in sleep
    assert (readout[L - 1] - ann).abs().max() > 1e-3


class PreActivationBlock(nn.Module):
    """Pre-activation ResNet block: BN -> QCFS -> conv -> BN -> QCFS -> conv, plus the input."""

    def __init__(self, placement):
        super().__init__()
        self.placement = placement
        self.stem, self.act0 = nn.Conv2d(2, 4, 3, padding=1), QCFS(L, 1.0)
        self.bn1, self.act1, self.conv1 = nn.BatchNorm2d(4), QCFS(L, 1.0), nn.Conv2d(4, 4, 3, padding=1)
        self.bn2, self.act2, self.conv2 = nn.BatchNorm2d(4), QCFS(L, 1.0), nn.Conv2d(4, 4, 3, padding=1)
        self.bn_out, self.fc = nn.BatchNorm2d(4), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = self.act0(self.stem(x))
        if self.placement == "after the activation":
            y = self.conv2(self.act2(self.bn2(self.conv1(self.act1(self.bn1(h)))))) + h
            return self.fc(F.avg_pool2d(y, 2).flatten(1))
        if self.placement == "after a residual add":
            y = self.act1(self.bn1(self.conv1(h) + h))
            return self.fc(F.avg_pool2d(y, 2).flatten(1))
        return self.fc(self.bn_out(F.avg_pool2d(h, 2)).flatten(1))  # after average pooling


@pytest.mark.parametrize("placement", ["after the activation", "after a residual add", "after average pooling"])
def test_each_batchnorm_placement_is_exact(placement):
    from helpers import randomize_batchnorm

    torch.manual_seed(12)
    model = PreActivationBlock(placement).eval()
    randomize_batchnorm(model, torch.Generator().manual_seed(12))
    x = torch.rand(4, 2, 8, 8)
    _spread(model, x)
    assert torch.allclose(_gn_t1(model, x)[0], model(x), atol=1e-5)


# 12. every spelling of the same operation --------------------------------------------

class Normalising(nn.Module):
    def __init__(self, spelling):
        super().__init__()
        self.spelling = spelling
        self.register_buffer("mean", torch.tensor([0.4, 0.5]).view(1, 2, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.3]).view(1, 2, 1, 1))
        self.conv, self.act, self.fc = nn.Conv2d(2, 4, 3, padding=1), QCFS(L, 1.0), nn.Linear(4, 3)

    def forward(self, x):
        if self.spelling == "operators":
            x = (x - self.mean) / self.std
        else:
            x = torch.div(torch.sub(x, self.mean), self.std)
        h = self.act(self.conv(x))
        if self.spelling == "operators":
            pooled = torch.mean(h, (2, 3))
        else:
            halves = torch.stack(h.chunk(2, dim=1), dim=1)  # [B, 2, C/2, H, W]
            pooled = halves.flatten(1, 2).mean((2, 3))
        return self.fc(pooled * 2.0)


def test_operations_over_the_batch_dimension_are_refused():
    class OverBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(1, 4, 3, padding=1), QCFS(L, 1.0)

        def forward(self, x):
            return self.act(self.conv(x)).mean(0)

    with pytest.raises(SnnconvError) as err:
        convert(OverBatch(), "if")
    assert str(err.value) == ("layer 'mean' (mean over dim 0) has no faithful spiking form: dim 0 is the batch (it "
                              "carries time in the SNN): reduce, concatenate or move only dims >= 1")


@pytest.mark.parametrize("spelling", ["operators", "functions"])
def test_normalisation_and_mean_in_any_spelling(spelling):
    torch.manual_seed(10)
    model = Normalising(spelling).eval()
    x = torch.rand(4, 2, 6, 6)
    _spread(model, x)
    assert torch.allclose(_gn_t1(model, x)[0], model(x), atol=1e-5)


def test_several_outputs_are_counted_per_path():
    """Every spike of the one spiking layer reaches 3 class logits and 2 box channels
    through each of the two box-head calls: fan-out 3 + 2 + 2 = 7 synaptic operations."""
    from snnconv.insight import CostCounter

    torch.manual_seed(7)
    model = TwoHeads().eval()
    x = torch.rand(2, 1, 8, 8)
    _spread(model, x)
    snn = convert(model, "if")
    counter = CostCounter(snn, x)
    simulate(snn, x, 4, recorder=counter)
    (name,) = counter.profile.fanout
    assert torch.equal(counter.profile.fanout[name], torch.full((4, 8, 8), 7.0, dtype=torch.float64))
    assert counter.total_sops() == 7 * counter.total_events() > 0


# 13. a negative lambda --------------------------------------------------------------

def test_negative_lambda_is_named_and_training_keeps_it_positive():
    from snnconv.activations import keep_thresholds_positive

    model = nn.Sequential(nn.Linear(3, 4), QCFS(L, 1.0), nn.Linear(4, 4), QCFS(L, 1.0), nn.Linear(4, 2))
    with torch.no_grad():
        model[3].threshold.fill_(-0.25)
    with pytest.raises(SnnconvError) as err:
        convert(model, "if")
    assert str(err.value) == (
        "activation '3' (QCFS) has clip value lambda = -0.25, but it must be > 0 (it is the spiking threshold): "
        "retrain with lambda kept positive (snnconv train does this; in your own loop call "
        "snnconv.activations.keep_thresholds_positive(model) after each optimizer.step()), or set it to a positive value"
    )
    # a gradient step that drives lambda through zero is undone by the clamp
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    with torch.no_grad():
        model[3].threshold.fill_(0.01)
    model[3].threshold.grad = torch.tensor(1.0)
    optimizer.step()
    assert model[3].threshold.item() < 0
    assert keep_thresholds_positive(model) == ["3"]
    assert model[3].threshold.item() == pytest.approx(1e-3) and model[1].threshold.item() == 1.0
    convert(model, "if")  # now converts


# 14. NIR export of a (3, 5) kernel and of groups = 2 --------------------------------

@pytest.mark.parametrize("conv", [
    nn.Conv2d(2, 4, (3, 5), padding=(1, 2)), nn.Conv2d(2, 4, 3, padding=1, groups=2),
    nn.Conv2d(2, 4, (3, 5), padding="same", groups=2),
])
def test_nir_round_trip_of_rectangular_and_grouped_kernels(conv, tmp_path):
    pytest.importorskip("nir")
    from test_nir import run_nir
    from snnconv.export import export_nir, read_nir

    torch.manual_seed(11)
    model = nn.Sequential(conv, QCFS(L, 1.0), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).double().eval()
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    _spread(model, x)
    snn = convert(model, "if")
    export_nir(snn, tmp_path / "net.nir", (2, 6, 6), warn=False)
    graph = read_nir(tmp_path / "net.nir")
    expected = simulate(snn, x, 8)
    assert expected.abs().sum() > 0
    assert torch.allclose(run_nir(graph, x, 8), expected, rtol=1e-9, atol=1e-9)


# 15. the same input checks on every path ---------------------------------------------

def _paths(model, snn):
    from snnconv.export import to_nir
    from snnconv.insight import CostCounter, layerwise_error

    return {
        "input": lambda x: simulate(snn, x, 2),
        "calibration data": lambda x: convert(model, "if", calibration=x),
        "example": lambda x: CostCounter(snn, x),
        "layer error": lambda x: layerwise_error(model, snn, x, 2),
        "an input of input_shape": lambda x: to_nir(snn, tuple(x.shape[1:]), warn=False),
    }


@pytest.mark.parametrize("bad,message", [
    (lambda x: (x * 255).to(torch.uint8), "{what} is torch.uint8, not floating point: scale it to floats first "
     "(e.g. x.float() / 255, then the training normalisation)"),
    (lambda x: x[:, :1], "{what} has 1 channels (dim 1) but layer '0' (Conv2d) takes 2: give data shaped like the training data"),
    (lambda x: x[:, :, :, :, None], "{what} has shape (3, 2, 6, 6, 1) but layer '0' (Conv2d) takes [batch, 2, ...] with 4 dims: give 4 dims"),
    (lambda x: x.clone().fill_(float("nan")), "{what} contains NaN or inf: clean the data first"),
])
def test_every_path_checks_its_input_the_same_way(bad, message):
    pytest.importorskip("nir")
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.rand(3, 2, 6, 6)
    snn = convert(model, "if", calibration=x, threshold="max")  # 3 images: too few values for a 99.9th percentile
    for what, run in _paths(model, snn).items():
        if what == "an input of input_shape" and "NaN" in message or "uint8" in message and what == "an input of input_shape":
            continue  # a shape holds neither values nor a dtype
        with pytest.raises(SnnconvError) as err:
            run(bad(x))
        shown = "input" if what == "layer error" else what
        expected = message.format(what=shown)
        if what == "an input of input_shape":  # the export probes one sample of that shape
            expected = expected.replace("(3, 2,", "(1, 2,")
        assert str(err.value) == expected, what


def test_float64_data_runs_on_a_float32_network_and_a_missing_batch_dim_is_named():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.rand(30, 2, 6, 6)  # enough values for the default 99.9th percentile
    snn = convert(model, "if", calibration=x.double())
    assert torch.equal(snn(x.double(), 4), snn(x, 4))
    assert snn.graph.get_submodule("site_0").threshold == convert(model, "if", calibration=x).graph.get_submodule("site_0").threshold
    with pytest.raises(SnnconvError) as err:
        simulate(snn, x[0], 4)
    assert str(err.value) == ("input has shape (2, 6, 6) but layer '0' (Conv2d) takes [batch, 2, ...] with 4 dims: "
                              "add the batch dimension (x.unsqueeze(0))")


def test_counters_through_affine_glue_count_one_path_per_spike():
    """A spike scaled by a parameter, shifted by a BatchNorm kept as an affine layer,
    subtracted or negated still reaches each consumer once: fan-out is the number of
    synapses of the next layer (here a Linear(4, 3) per token: 3), never a weight."""
    from snnconv.insight import cost_profile

    class Glue(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix, self.act, self.bn, self.head = nn.Linear(4, 4), QCFS(L, 1.0), nn.BatchNorm1d(5), nn.Linear(4, 3)
            self.scale = nn.Parameter(torch.full((4,), 0.5))

        def forward(self, x):  # x [B, 5, 4]
            h = self.act(self.mix(x))
            return self.head(self.bn(self.scale * h) - 0.1).sum(1) - self.head(-h.mul(self.scale)).sum(1)

    model = Glue().eval()
    x = torch.rand(2, 5, 4)
    profile = cost_profile(convert(model, "if"), x)
    (fanout,) = profile.fanout.values()
    assert torch.equal(fanout, torch.full((5, 4), 6.0, dtype=torch.float64))  # two heads' paths of 3


def test_activation_of_a_parameter_stays_a_constant():
    """relu(self.gate) does not depend on the input: it is a constant, not a spiking layer."""
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(3, 4), QCFS(L, 1.0), nn.Linear(4, 2)
            self.gate = nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.25]))

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)) * F.relu(self.gate))

    torch.manual_seed(13)
    model = Gated().eval()
    x = torch.rand(5, 3)
    snn = convert(model, "gn", group_size=L)
    assert len(snn.spiking_layers()) == 1
    assert torch.allclose(snn(x, 1)[0], model(x), atol=1e-5)

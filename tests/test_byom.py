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

from helpers import shared_data, spread_thresholds
from snnconv import ClipFloor, QCFS, convert, simulate, swap_relu
from snnconv.data import load_dataset
from snnconv.errors import SnnconvError
from snnconv.metrics import running_average

L = 4


def _spread(model, x):
    """Data-spread lambdas (see helpers.spread_thresholds), kept positive."""
    spread_thresholds(model, x)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (QCFS, ClipFloor)):
                m.threshold.clamp_(min=0.25)
    return model


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

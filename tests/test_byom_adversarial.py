"""Hand-written models that once converted to wrong numbers (or crashed with a raw
traceback) without an error: each now converts exactly or is refused in one line.

Exactness references as in test_byom.py: a group neuron with tau = L at T = 1 computes
the QCFS ANN exactly; CIF with T = L wake steps and enough sleep steps ends at the
clip-floor ANN exactly.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import ADVERSARIAL_LEVELS as L
from helpers import cif_readout, gn_at_t1, ready_for_exactness
from snnconv import ClipFloor, QCFS, convert, simulate
from snnconv.errors import SnnconvError
from snnconv.metrics import running_average


# a conv called at two places (shared weights), each call with its own BatchNorm ------

class SharedConv(nn.Module):
    """One conv applied twice (recurrent-style weight sharing), a BN per application;
    and a conv whose first call has a BN and second call has none."""

    def __init__(self, second_bn: bool):
        super().__init__()
        self.second_bn = second_bn
        self.stem, self.act0 = nn.Conv2d(2, 4, 3, padding=1), QCFS(L)
        self.shared, self.bn1, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.act1, self.act2, self.fc = QCFS(L), QCFS(L), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = self.act1(self.bn1(self.shared(self.act0(self.stem(x)))))
        h = self.shared(h)
        h = self.act2(self.bn2(h) if self.second_bn else h)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("second_bn", [True, False])
def test_a_shared_conv_keeps_each_calls_batchnorm(second_bn):
    torch.manual_seed(0)
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    model = ready_for_exactness(SharedConv(second_bn), x)
    assert torch.allclose(gn_at_t1(model, x), model(x), atol=1e-9)


# Linear -> BatchNorm1d on tokens [B, N, C]: BN normalises dim 1 (N), not the features --

class TokenBatchNorm(nn.Module):
    def __init__(self, tokens):
        super().__init__()
        self.mix, self.bn, self.act, self.head = nn.Linear(4, 4), nn.BatchNorm1d(tokens), QCFS(L), nn.Linear(4, 3)
        self.fc, self.bn_fc, self.act_fc = nn.Linear(4, 4), nn.BatchNorm1d(4), QCFS(L)

    def forward(self, x):  # x [B, N, 4]
        h = self.head(self.act(self.bn(self.mix(x)))).mean(1)  # tokens: BN over N
        return self.head(self.act_fc(self.bn_fc(self.fc(x.mean(1))))) + h  # [B, C]: BN over C (folded)


@pytest.mark.parametrize("tokens", [4, 5])  # N == C once fused along the features silently; N != C crashed
def test_batchnorm1d_over_tokens_after_a_linear(tokens):
    torch.manual_seed(1)
    x = torch.rand(3, tokens, 4, dtype=torch.float64)
    model = ready_for_exactness(TokenBatchNorm(tokens), x)
    assert torch.allclose(gn_at_t1(model, x), model(x), atol=1e-9)


# an in-place activation whose input is read again afterwards --------------------------

class InPlace(nn.Module):
    """``F.relu(y, inplace=True)`` / ``y.relu_()`` / ``nn.ReLU(inplace=True)`` overwrite y:
    the later ``fc(y)`` reads the activation's output in the ANN."""

    def __init__(self, spelling):
        super().__init__()
        self.spelling = spelling
        self.conv, self.relu, self.act, self.fc = nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(inplace=True), QCFS(L), nn.Linear(4 * 6 * 6, 3)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv2(self.act(self.conv(x)))
        early = self.fc(y.flatten(1))  # read before the activation: the pre-activation
        if self.spelling == "function":
            z = F.relu(y, inplace=True)
        elif self.spelling == "method":
            z = y.relu_()
        else:
            z = self.relu(y)
        return self.fc(z.flatten(1)) + self.fc(y.flatten(1)) + early  # y is z now


@pytest.mark.parametrize("spelling", ["function", "method", "module"])
def test_in_place_activation_overwrites_its_input(spelling):
    torch.manual_seed(2)
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    model = ready_for_exactness(InPlace(spelling), x)
    snn = convert(model, "if", calibration=x, threshold="max")
    threshold = float(snn.graph.get_submodule("site_1").threshold)
    # the same network with the ReLU as a QCFS of that threshold, which GN at T = 1 computes exactly
    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.m, self.q = model, QCFS(L, threshold)

        def forward(self, x):
            y = self.m.conv2(self.m.act(self.m.conv(x)))
            z = self.q(y)
            return self.m.fc(z.flatten(1)) * 2 + self.m.fc(y.flatten(1))

    reference = Reference().double().eval()
    gn = convert(model, "gn", group_size=L, calibration=x, threshold="max")(x, 1)[0]
    assert torch.allclose(gn, reference(x), atol=1e-9)
    y = model.conv2(model.act(model.conv(x)))
    assert torch.allclose(model(x), model.fc(F.relu(y).flatten(1)) * 2 + model.fc(y.flatten(1)), atol=1e-12)  # the ANN


def test_in_place_activation_read_through_an_older_view_is_refused():
    class OldView(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.fc = nn.Conv2d(2, 4, 3, padding=1), QCFS(L), nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            y = self.conv(self.act(x))
            flat = y.view(y.size(0), -1)
            z = torch.relu_(y)
            return self.fc(z.flatten(1)) + self.fc(flat)

    with pytest.raises(SnnconvError) as err:
        convert(OldView(), "if")
    assert str(err.value) == ("activation 'relu_' overwrites its input in place, which 'fc_1' then reads through 'view' "
                              "(a view of the same memory): use the out-of-place form (nn.ReLU(), F.relu(x), inplace=False)")


# a class token expanded to the batch read off a spiking value -------------------------

class ClassToken(nn.Module):
    """ViT-style: a learned token expanded to ``h.shape[0]`` and concatenated to the tokens."""

    def __init__(self, size_of):
        super().__init__()
        self.size_of = size_of
        self.mix, self.act, self.mix2, self.act2, self.head = nn.Linear(4, 4), ClipFloor(L), nn.Linear(4, 4), ClipFloor(L), nn.Linear(4, 3)
        self.token = nn.Parameter(torch.rand(1, 1, 4))

    def forward(self, x):  # x [B, N, 4]
        h = self.act(self.mix(x))
        token = self.token.expand((h if self.size_of == "spikes" else x).shape[0], -1, -1)
        return self.head(self.act2(self.mix2(torch.cat([token, h], dim=1)))[:, 0])


@pytest.mark.parametrize("size_of", ["spikes", "input"])
def test_cif_class_token_is_a_constant_off_in_sleep(size_of):
    torch.manual_seed(3)
    x = torch.rand(3, 5, 4, dtype=torch.float64)
    model = ready_for_exactness(ClassToken(size_of), x)
    assert torch.allclose(cif_readout(model, x), model(x), atol=1e-9)


# a QCFS subclass whose forward() computes something else ------------------------------

class DoubledQCFS(QCFS):
    def forward(self, z):
        return super().forward(z) * 2.0


def test_qcfs_subclass_with_its_own_forward_is_not_taken_for_qcfs():
    model = nn.Sequential(nn.Linear(3, 4), DoubledQCFS(L, 1.0), nn.Linear(4, 2))
    with pytest.raises(SnnconvError) as err:
        convert(model, "if")
    assert str(err.value).startswith("module '1' (DoubledQCFS) computes function floor, which has no spiking form: "
                                     "if DoubledQCFS is an activation, map it to a supported one")


# indexing, moving or squeezing the batch dimension after spikes -----------------------

class Head(nn.Module):
    def __init__(self, tail):
        super().__init__()
        self.tail = tail
        self.conv, self.act, self.fc = nn.Conv2d(2, 4, 3, padding=1), QCFS(L), nn.Linear(4, 3)
        self.flat0, self.unflat0 = nn.Flatten(0), nn.Unflatten(0, (1, -1))

    def forward(self, x):
        return self.tail(self, self.act(self.conv(x)))


_OVER_BATCH = {
    "h[0:1]": (lambda s, h: s.fc(h[0:1].mean((2, 3))), "getitem"),
    "h[1:]": (lambda s, h: s.fc(h[1:].mean((2, 3))), "getitem"),
    "h[0]": (lambda s, h: s.fc(h[0].mean((1, 2))), "getitem"),
    "h[None]": (lambda s, h: s.fc(h[None].mean((3, 4)))[0], "getitem"),
    "h[idx]": (lambda s, h: s.fc(h[torch.tensor([1, 0, 2])].mean((2, 3))), "getitem"),
    "movedim(0, 1)": (lambda s, h: s.fc(h.movedim(0, 1).mean((2, 3)).T), "movedim"),
    "squeeze(0)": (lambda s, h: s.fc(h.squeeze(0).mean((2, 3))), "squeeze"),
    "nn.Flatten(0)": (lambda s, h: s.fc(s.flat0(h.mean((2, 3))).view(-1, 4)), "flat0"),
    "nn.Unflatten(0)": (lambda s, h: s.fc(s.unflat0(h.mean((2, 3)))[0]), "unflat0"),
    ".T": (lambda s, h: s.fc(h.mean((2, 3)).T.T), "getattr"),
}


@pytest.mark.parametrize("spelling", list(_OVER_BATCH))
def test_selecting_or_moving_the_batch_after_spikes_is_refused(spelling):
    tail, name = _OVER_BATCH[spelling]
    model = Head(tail).eval()
    model(torch.rand(3, 2, 6, 6))  # the ANN runs
    with pytest.raises(SnnconvError, match=rf"^layer '{name}(_\d)?' \(.* over dim 0\) has no faithful spiking form: dim 0 is "
                                           r"the batch \(it carries time in the SNN\)"):
        convert(model, "if")


@pytest.mark.parametrize("tail", [
    lambda s, h: s.fc(F.adaptive_avg_pool2d(h, 1).squeeze()),
    lambda s, h: s.fc(torch.squeeze(F.adaptive_avg_pool2d(h, 1))),
    lambda s, h: s.fc(torch.cat(h[:, :, ::2][..., 1:].chunk(2, 1), 1).mean((2, 3))),  # indexing dims >= 1, lists
])
def test_squeeze_and_indexing_after_pooling_keep_the_batch(tail):
    """``pool(h).squeeze()`` (the classic head) crashed with a raw RuntimeError: the
    one-sample probe squeezed the batch away. Now it keeps dim 0, for any batch."""
    torch.manual_seed(4)
    for batch in (3, 1):
        x = torch.rand(batch, 2, 6, 6, dtype=torch.float64)
        model = ready_for_exactness(Head(tail), torch.rand(3, 2, 6, 6, dtype=torch.float64))
        out = gn_at_t1(model, x)
        assert out.shape == (batch, 3)
        assert torch.allclose(out, model(x).reshape(batch, 3), atol=1e-9)
        assert simulate(convert(model, "if"), x, 4).shape == (4, batch, 3)


# forward(self, x, y): simulate() drives one input --------------------------------------

def test_two_inputs_are_refused_at_conversion():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act, self.fc = nn.Linear(3, 4), nn.Linear(2, 4), QCFS(L), nn.Linear(4, 2)

        def forward(self, x, y):
            return self.fc(self.act(self.a(x) + self.b(y)))

    with pytest.raises(SnnconvError) as err:  # was: converted, then a raw RuntimeError in simulate()
        convert(TwoInputs(), "if")
    assert str(err.value) == (
        "TwoInputs.forward takes 2 inputs (x, y), but a spiking network is driven by one input tensor: wrap the model "
        "in a module whose forward(x) takes one tensor (e.g. the inputs concatenated along dim 1 and split inside), "
        "or give the other inputs default values")


# F.hardtanh(x, 0, m) is nn.Hardtanh(0, m) --------------------------------------------

class Clipped(nn.Module):
    def __init__(self, spelling):
        super().__init__()
        self.spelling = spelling
        self.a, self.b, self.clip = nn.Linear(3, 6), nn.Linear(6, 2), nn.Hardtanh(0.0, 1.5)

    def forward(self, x):
        h = self.a(x)
        h = self.clip(h) if self.spelling == "module" else F.hardtanh(h, 0.0, 1.5) if self.spelling == "function" \
            else F.hardtanh(h, min_val=0.0, max_val=1.5)
        return self.b(h)


def test_functional_hardtanh_converts_like_the_module():
    torch.manual_seed(5)
    x = torch.randn(16, 3, dtype=torch.float64)
    module = Clipped("module").double().eval()
    expected = convert(module, "if")(x, 32)
    for spelling in ("function", "keywords"):
        model = Clipped(spelling).double().eval()
        model.load_state_dict(module.state_dict())
        assert torch.equal(model(x), module(x))
        assert torch.equal(convert(model, "if")(x, 32), expected)
    assert (running_average(expected)[-1] - module(x)).abs().max() < 0.1  # rate code of clip(x, 0, 1.5), theta = 1.5

    class Symmetric(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, x):
            return self.m.b(F.hardtanh(self.m.a(x)))  # clip(x, -1, 1)

    with pytest.raises(SnnconvError, match=r"^layer 'hardtanh' \(function hardtanh\) has no faithful spiking form"):
        convert(Symmetric(), "if")


# a negative dim that is the batch: known only when the graph runs ---------------------

@pytest.mark.parametrize("tail,name", [
    (lambda s, h: s.fc(torch.cat([h.mean((2, 3)), h.mean((2, 3))], dim=-2)), "cat"),  # [B, C]: -2 is dim 0
    (lambda s, h: s.fc(h.mean((2, 3)).sum(-2, keepdim=True)), "sum"),
    (lambda s, h: s.fc(h.mean((2, 3)).unsqueeze(-3).mean(1)), "unsqueeze"),
])
def test_negative_dims_that_resolve_to_the_batch_are_refused(tail, name):
    """Was: a raw RuntimeError at the output (or, with other shapes, samples mixed over
    time without an error). Now the one-sample probe refuses it before the simulation."""
    model = Head(tail).eval()
    x = torch.rand(3, 2, 6, 6)
    model(x)
    with pytest.raises(SnnconvError, match=rf"^layer '{name}(_\d)?' \({name} over dim 0\) has no faithful spiking form"):
        simulate(convert(model, "if"), x, 4)


# .clone() / .detach() pass values on unchanged -----------------------------------------

def test_clone_and_detach_are_identities():
    class Copies(nn.Module):
        def __init__(self, spelling):
            super().__init__()
            self.spelling = spelling
            self.conv, self.act, self.fc = nn.Conv2d(2, 4, 3, padding=1), QCFS(L), nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            h = self.act(self.conv(x))
            h = {"method": lambda: h.clone().detach(), "function": lambda: torch.detach(torch.clone(h)),
                 "none": lambda: h}[self.spelling]()
            return self.fc(h.flatten(1))

    torch.manual_seed(6)
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    plain = ready_for_exactness(Copies("none"), x)
    for spelling in ("method", "function"):  # was: refused ("method .clone() has no faithful spiking form")
        model = Copies(spelling).double().eval()
        model.load_state_dict(plain.state_dict())
        assert torch.allclose(gn_at_t1(model, x), model(x), atol=1e-9)
        assert torch.equal(convert(model, "if")(x, 8), convert(plain, "if")(x, 8))


def test_in_place_activation_after_a_size_read_is_not_a_view_read():
    class SizeFirst(nn.Module):
        def __init__(self, in_place):
            super().__init__()
            self.in_place = in_place
            self.conv, self.act, self.conv2, self.fc = nn.Conv2d(2, 4, 3, padding=1), QCFS(L), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(144, 3)

        def forward(self, x):
            y = self.conv2(self.act(self.conv(x)))
            n = y.shape[0]  # a size, not a view: the in-place ReLU does not change it
            if self.in_place:
                F.relu(y, inplace=True)
            else:
                y = F.relu(y)
            return self.fc(y.reshape(n, -1))

    torch.manual_seed(7)
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    plain = ready_for_exactness(SizeFirst(False), x)
    model = SizeFirst(True).double().eval()
    model.load_state_dict(plain.state_dict())
    assert torch.equal(model(x.clone()), plain(x))
    expected = convert(plain, "if", calibration=x, threshold="max")(x, 8)
    assert torch.equal(convert(model, "if", calibration=x, threshold="max")(x, 8), expected)


# n // 2 of a size read in forward (the README's spelling) ------------------------------

def test_a_fraction_of_the_batch_size_is_refused_in_one_line():
    """n // 2 of a size read in forward would group samples (which carry time in the SNN):
    refused at conversion, in one line (the README says so)."""
    class Halves(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.fc = nn.Conv2d(2, 4, 3, padding=1), QCFS(L), nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            n = x.shape[0]
            h = self.act(self.conv(x))
            return self.fc(h.reshape(n // 2, -1).reshape(n, -1))

    with pytest.raises(SnnconvError, match=r"^layer 'floordiv' \(function floordiv\) has no faithful spiking form: [^\n]*$"):
        convert(Halves(), "if")


# the common torchvision spelling: nn.ReLU(inplace=True) whose output feeds the next conv --

class TorchvisionBlock(nn.Module):
    """conv -> BN -> ReLU(inplace) -> conv -> BN, ``out += identity``, ReLU(inplace): the
    activation's own output is read next (was refused as 'a view of the same memory')."""

    def __init__(self, inplace: bool):
        super().__init__()
        self.stem, self.relu = nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(inplace=inplace)
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.relu(self.stem(x))
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        out = torch.relu_(out) if self.relu.inplace else torch.relu(out)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def test_in_place_relu_read_by_the_next_layer_converts_like_out_of_place():
    torch.manual_seed(3)
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    in_place = ready_for_exactness(TorchvisionBlock(True), x)
    out_of_place = ready_for_exactness(TorchvisionBlock(False), x)
    out_of_place.load_state_dict(in_place.state_dict())
    assert torch.allclose(in_place(x.clone()), out_of_place(x.clone()), atol=1e-12)  # the same ANN
    kw = dict(group_size=L, calibration=x, threshold="max")
    expected = convert(out_of_place, "gn", **kw)(x, 1)[0]
    assert torch.allclose(convert(in_place, "gn", **kw)(x, 1)[0], expected, atol=1e-9)


class StaleView(nn.Module):
    """A view taken before an in-place activation (``detach()`` shares memory, a view of a
    ``contiguous()``) read after it reads the activated values in the ANN."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv, self.act, self.conv2, self.fc = nn.Conv2d(2, 4, 3, padding=1), QCFS(L), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        y = self.conv2(self.act(self.conv(x)))
        kept = y.detach() if self.how == "detach" else y.contiguous()
        z = torch.relu_(y)
        return self.fc(z.flatten(1)) + self.fc(kept.flatten(1))


@pytest.mark.parametrize("how", ["detach", "contiguous"])
def test_in_place_activation_read_through_a_view_of_an_older_view_is_refused(how):
    with pytest.raises(SnnconvError, match=r"^activation 'relu_' overwrites its input in place, which .* use the out-of-place form"):
        convert(StaleView(how), "if")


# x += y: in the ANN a second name for x sees the sum; fx records x + y -------------------

class AddInPlace(nn.Module):
    def __init__(self, kept: bool):
        super().__init__()
        self.kept = kept
        self.c1, self.a1, self.c2, self.a2 = nn.Conv2d(2, 4, 3, padding=1), QCFS(L), nn.Conv2d(4, 4, 3, padding=1), QCFS(L)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = self.a1(self.c1(x))
        g = self.c2(h)
        kept = g.flatten(1) if self.kept else None  # a view: it sees the += below
        alias = g
        g += h
        n = alias.shape[0]  # a size read under the old name: the same after the update
        n *= 1  # a number: += / *= rebind it, no aliasing
        out = self.a2(g).reshape(n, -1)
        return self.fc(out + kept if self.kept else out)


def test_an_in_place_add_read_under_another_name_is_refused_and_a_plain_one_is_exact():
    torch.manual_seed(4)
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    model = ready_for_exactness(AddInPlace(False), x)
    assert torch.allclose(gn_at_t1(model, x), model(x), atol=1e-9)
    with pytest.raises(SnnconvError) as err:
        convert(AddInPlace(True), "gn", group_size=L)
    assert str(err.value) == ("AddInPlace: 'iadd' (x += y) overwrites 'c2' in place, which 'add' then reads under another "
                              "name: write x = x + y (out of place) or read the value before the update")

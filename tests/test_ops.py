"""The table of operations (snnconv.convert.ops), tested entry by entry: a new layer is one entry.

For every op: each spelling is found as that op; spellings of one op convert, cost and
simulate (wake and sleep) identically; an op that declares no constant drive maps zero to
zero; every synaptic op's fan-out and MACs equal a count made independently, by hand.
"""
from __future__ import annotations

import itertools
import math
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from snnconv import QCFS, ClipFloor, SnnconvError, convert, simulate
from snnconv.convert.activation_sites import SUPPORTED_FUNCTIONS, SUPPORTED_METHODS, SUPPORTED_MODULES
from snnconv.convert.ops import COST_RULES, KINDS, OPS, OPS_BY_NAME, constant_in_sleep, lookup, op_of_module
from snnconv.insight import cost_profile
from snnconv.metrics import running_average

D = torch.float64


def _node_for(spelling) -> tuple[fx.Node, dict]:
    """A one-node graph calling ``spelling`` on a placeholder."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    modules = {}
    if isinstance(spelling, str):
        node = graph.call_method(spelling, (x,))
    elif isinstance(spelling, type):
        modules["m"] = spelling.__new__(spelling)  # isinstance needs no constructor arguments
        node = graph.call_module("m", (x,))
    else:
        node = graph.call_function(spelling, (x,))
    return node, modules


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_every_spelling_is_found_as_its_op(op):
    assert op.kind in KINDS and op.cost in COST_RULES and op.spellings
    assert (op.cost == "synapse") == (op.kind == "synaptic")
    for spelling in op.spellings:
        node, modules = _node_for(spelling)
        assert lookup(node, modules) is op, spelling
        assert constant_in_sleep(node, modules) is op.constant_in_sleep
        if op.kind != "activation":  # everything but activations (which become sites) converts
            assert (spelling in SUPPORTED_MODULES or spelling in SUPPORTED_FUNCTIONS or spelling in SUPPORTED_METHODS
                    or op.name.startswith(("max_pool", "adaptive_max_pool")) or spelling is F.pad), spelling
        assert op.nir is not None or op.nir_note, f"{op.name}: say why it has no NIR form"


def test_each_spelling_is_registered_once():
    spellings = [s for op in OPS for s in op.spellings]
    assert len(spellings) == len(set(spellings))
    assert len(OPS_BY_NAME) == len(OPS)


def test_unknown_nodes_are_not_ops_and_keep_their_constant_in_sleep():
    for spelling in ("exp", torch.sigmoid, nn.GELU):
        node, modules = _node_for(spelling)
        assert lookup(node, modules) is None
        assert constant_in_sleep(node, modules) is True  # the engine checks: f(0) is subtracted in sleep
    assert op_of_module(nn.ReLU6()) is OPS_BY_NAME["relu6"]  # a subclass (of Hardtanh) finds its own entry


# Spellings that compute the same thing: op name -> functions of the spiking layer's output h [B, 4, 6, 6].
_ZERO_PAD = nn.ZeroPad2d(1)
SPELLINGS = {
    "mul": [lambda h: h * 0.5, lambda h: torch.mul(h, 0.5), lambda h: torch.multiply(h, 0.5), lambda h: h.mul(0.5)],
    "div": [lambda h: h / 2.0, lambda h: torch.div(h, 2.0), lambda h: torch.divide(h, 2.0),
            lambda h: torch.true_divide(h, 2.0), lambda h: h.div(2.0), lambda h: h.true_divide(2.0)],
    "add": [lambda h: h + 0.25, lambda h: torch.add(h, 0.25), lambda h: h.add(0.25)],
    "sub": [lambda h: h[:, :2] - h[:, 2:], lambda h: torch.sub(h[:, :2], h[:, 2:]),
            lambda h: torch.subtract(h[:, :2], h[:, 2:]), lambda h: h[:, :2].sub(h[:, 2:])],
    "neg": [lambda h: -h, lambda h: torch.neg(h), lambda h: h.neg()],
    "mean": [lambda h: torch.mean(h, dim=1, keepdim=True), lambda h: h.mean(1, keepdim=True)],
    "sum": [lambda h: torch.sum(h, dim=1, keepdim=True), lambda h: h.sum(1, keepdim=True)],
    "flatten": [nn.Flatten(), lambda h: torch.flatten(h, 1), lambda h: h.flatten(1)],
    "reshape": [lambda h: torch.reshape(h, (-1, 144)), lambda h: h.reshape(-1, 144), lambda h: h.view(-1, 144)],
    "unflatten": [nn.Unflatten(1, (2, 2)), lambda h: h.unflatten(1, (2, 2))],
    "upsample": [nn.Upsample(scale_factor=2), lambda h: F.interpolate(h, scale_factor=2)],
    "pad": [_ZERO_PAD, lambda h: F.pad(h, (1, 1, 1, 1))],
    "cat": [lambda h: torch.cat([h, h], 1), lambda h: torch.concat([h, h], 1)],
    "avg_pool2d": [nn.AvgPool2d(2), lambda h: F.avg_pool2d(h, 2)],
    "adaptive_avg_pool2d": [nn.AdaptiveAvgPool2d(2), lambda h: F.adaptive_avg_pool2d(h, 2)],
    "permute": [lambda h: torch.permute(h, (0, 2, 3, 1)), lambda h: h.permute(0, 2, 3, 1)],
    "transpose": [lambda h: torch.transpose(h, 2, 3), lambda h: h.transpose(2, 3)],
    "squeeze": [lambda h: torch.squeeze(h.unsqueeze(1), 1), lambda h: h.unsqueeze(1).squeeze(1)],
    "movedim": [lambda h: torch.movedim(h, 1, 3), lambda h: h.movedim(1, 3)],
    "chunk": [lambda h: torch.chunk(h, 2, 1)[1], lambda h: h.chunk(2, 1)[1]],
    "split": [lambda h: torch.split(h, 3, 2)[0], lambda h: h.split(3, 2)[0]],
    "identity": [nn.Identity(), lambda h: h.contiguous()],
}


class _Around(nn.Module):
    """conv -> clip-floor -> f -> flatten -> linear -> clip-floor -> linear, with f the spelling under test."""

    def __init__(self, f, features: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 4, 3)
        self.act = ClipFloor(4, threshold=0.6)
        self.f = f if isinstance(f, nn.Module) else None
        self._fn = None if isinstance(f, nn.Module) else f
        self.fc = nn.Linear(features, 5)
        self.act2 = ClipFloor(4, threshold=0.4)
        self.out = nn.Linear(5, 3)
        with torch.no_grad():
            self.conv.weight.abs_()

    def forward(self, x):
        h = self.act(self.conv(x))
        h = self.f(h) if self.f is not None else self._fn(h)
        return self.out(self.act2(self.fc(torch.flatten(h, 1))))


def _features(f) -> int:
    with torch.no_grad():
        return f(torch.zeros(1, 4, 6, 6)).flatten(1).shape[1]


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_spellings_of_one_op_convert_count_and_sleep_alike(name):
    x = torch.rand(3, 2, 8, 8, dtype=D, generator=torch.Generator().manual_seed(1))
    results = []
    for f in SPELLINGS[name]:
        model = _Around(f, _features(f)).double().eval()
        snn = convert(model, "if")
        found = {lookup(n, dict(snn.graph.named_modules())) for n in snn.graph.graph.nodes}
        removed = isinstance(f, nn.Identity)  # placeholders go in prepare (remove_dropout), like dropout
        assert (OPS_BY_NAME[name] in found) != removed, f"{name}: a spelling was not found as {name}"
        profile = cost_profile(snn, x)
        cif = convert(model, "cif")
        results.append((profile.fanout["site_0"], profile.ann_macs, simulate(snn, x, 4),
                        simulate(cif, x, 4, sleep_steps=24)))
        # CIF wake-sleep (T = L, then sleep with every constant drive off) gives the ANN
        # output exactly: the op is converted, and its sleep rule is right
        assert torch.allclose(running_average(results[-1][3], wake_steps=4)[-1], model(x), atol=1e-9)
    first = results[0]
    assert first[0].sum() > 0
    for other in results[1:]:
        assert torch.equal(other[0], first[0]) and other[1] == first[1]
        assert torch.equal(other[2], first[2]) and torch.equal(other[3], first[3])


@pytest.mark.parametrize("name", sorted(n for n in SPELLINGS if not OPS_BY_NAME[n].constant_in_sleep))
def test_ops_without_constant_drive_map_zero_to_zero(name):
    """The sleep rule: an op marked without constant drive is left as it is in sleep steps,
    which is exact only if it maps an all-zero input to zero."""
    zero = torch.zeros(2, 4, 6, 6, dtype=D)
    for f in SPELLINGS[name]:
        out = f.double()(zero) if isinstance(f, nn.Module) else f(zero)
        assert not out.any()


# Synaptic ops: (op name, in channels, out channels, groups, kernel, stride, padding, dilation, output_padding).
_SYNAPTIC = [
    ("conv1d", 4, 6, 2, 3, 2, 1, 1, 0), ("conv2d", 4, 6, 2, 3, 2, 1, 1, 0), ("conv3d", 4, 2, 1, 2, 1, 1, 2, 0),
    ("conv_transpose1d", 4, 6, 2, 3, 2, 1, 1, 1), ("conv_transpose2d", 4, 6, 2, 3, 2, 1, 1, 1),
    ("conv_transpose3d", 2, 4, 2, 2, 2, 0, 1, 0), ("linear", 4, 3, 1, None, None, None, None, None),
]
_SIZES = {1: (7,), 2: (6, 5), 3: (4, 5, 3)}


def test_the_synaptic_cases_cover_the_table():
    assert {case[0] for case in _SYNAPTIC} == {op.name for op in OPS if op.kind == "synaptic"}


def _axis_paths(i: int, n_out: int, k: int, s: int, p: int, d: int, transpose: bool) -> int:
    """Output positions of one axis that input position i reaches, counted one kernel tap at a time."""
    if transpose:  # input i writes outputs i*s - p + k*d
        return sum(0 <= i * s - p + t * d < n_out for t in range(k))
    return sum(0 <= o < n_out for o in range(n_out) for t in range(k) if o * s - p + t * d == i)


class _Synaptic(nn.Module):
    """Linear(3 -> c_in * spatial) -> QCFS -> the synaptic op (module or functional) -> output."""

    def __init__(self, case, functional: bool) -> None:
        super().__init__()
        name, c_in, c_out, groups, k, s, p, d, op_ = case
        self.case, self.functional = case, functional
        dims = None if name == "linear" else int(name[-2])
        self.shape = (c_in,) if dims is None else (c_in, *_SIZES[dims])
        torch.manual_seed(0)
        self.first = nn.Linear(3, math.prod(self.shape))
        self.act = QCFS(4, threshold=0.5)
        if name == "linear":
            layer = nn.Linear(c_in, c_out)
        elif name.startswith("conv_transpose"):
            layer = getattr(nn, f"ConvTranspose{dims}d")(c_in, c_out, k, s, p, op_, groups, dilation=d)
        else:
            layer = getattr(nn, f"Conv{dims}d")(c_in, c_out, k, s, p, d, groups)
        self.layer = None if functional else layer
        if functional:
            self.weight, self.bias = nn.Parameter(layer.weight.detach().clone()), nn.Parameter(layer.bias.detach().clone())

    def forward(self, x):
        h = self.act(self.first(x)).reshape(-1, *self.shape)
        if not self.functional:
            return self.layer(h)
        name, _, _, groups, _, s, p, d, op_ = self.case
        if name == "linear":
            return F.linear(h, self.weight, self.bias)
        if name.startswith("conv_transpose"):
            return getattr(F, name)(h, self.weight, self.bias, s, p, op_, groups, d)
        return getattr(F, name)(h, self.weight, self.bias, s, p, d, groups)


@pytest.mark.parametrize("functional", [False, True], ids=["module", "function"])
@pytest.mark.parametrize("case", _SYNAPTIC, ids=lambda c: c[0])
def test_synaptic_cost_equals_a_count_by_hand(case, functional):
    name, c_in, c_out, groups, k, s, p, d, op_ = case
    model = _Synaptic(case, functional).double().eval()
    snn = convert(model, "if")
    x = torch.rand(2, 3, dtype=D)
    profile = cost_profile(snn, x)
    out = model(x)[0]
    first_macs = 3 * math.prod(model.shape)
    if name == "linear":
        fanout = torch.full((c_in,), float(c_out), dtype=D)
        macs = c_out * c_in
    else:
        transpose = name.startswith("conv_transpose")
        spatial_in, spatial_out = _SIZES[len(model.shape) - 1], tuple(out.shape[1:])
        per_out = c_out // groups  # output channels each input channel feeds
        fanout = torch.zeros(model.shape, dtype=D)
        for position in itertools.product(*(range(n) for n in spatial_in)):
            paths = math.prod(_axis_paths(i, n, k, s, p, d, transpose) for i, n in zip(position, spatial_out))
            fanout[(slice(None), *position)] = per_out * paths
        taps = k ** len(spatial_in)
        # conv: output elements x (c_in / groups) x taps; transposed: input elements x (c_out / groups) x taps
        macs = out.numel() * (c_in // groups) * taps if not transpose else math.prod(model.shape) * (c_out // groups) * taps
    assert torch.equal(profile.fanout["site_0"], fanout.flatten())  # the spiking layer is before the reshape
    assert profile.input_macs == first_macs
    assert profile.ann_macs == first_macs + macs


def test_spikes_as_a_weight_have_no_synaptic_count():
    class SpikeWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.act = nn.Linear(3, 4), QCFS(4, threshold=0.5)
            self.other = nn.Linear(3, 2)

        def forward(self, x):
            return F.linear(self.other(x), self.act(self.first(x)).reshape(-1, 2, 2)[0])

    # a weight made of spikes selects a sample ([0]): refused at conversion, before any counting
    with pytest.raises(SnnconvError, match=r"^layer 'getitem' \(getitem over dim 0\)"):
        convert(SpikeWeight().double().eval(), "if")


def test_table_kinds_cover_what_the_converter_refuses():
    """Ops outside the table are refused with the node named (GELU, sigmoid, .exp())."""
    for layer, match in ((nn.GELU(), "GELU"), (lambda h: torch.sigmoid(h), "sigmoid"), (lambda h: h.exp(), "exp")):
        with pytest.raises(SnnconvError, match=match):
            convert(_Around(layer, 144).double().eval(), "if")


def test_binary_operator_spellings_share_the_entry_of_their_function():
    assert lookup(_node_for(operator.mul)[0], {}) is lookup(_node_for(torch.mul)[0], {}) is OPS_BY_NAME["mul"]

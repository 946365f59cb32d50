"""NIR export: round trip through a file, a reference NIR interpreter, refusals."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snnconv import QCFS, SnnconvError, convert, simulate

from helpers import make_source

nir = pytest.importorskip("nir")

from snnconv.export.nir import NIRSemanticsWarning, export_nir  # noqa: E402


def _meta(node, key, default):
    value = node.metadata.get(key, default)
    return value.decode() if isinstance(value, bytes) else value


def run_nir(graph, x: torch.Tensor, steps: int) -> torch.Tensor:
    """A small reference interpreter: the Input drives the graph at every step (dt = 1).

    IF: v += r·I; spike where v >= θ (or > θ, per metadata); reset by subtraction or to
    v_reset, per metadata; v(0) from metadata. Incoming edges are summed.
    """
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    preds: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    order: list[str] = []
    while len(order) < len(graph.nodes):  # topological order
        for name in graph.nodes:
            if name not in order and all(p in order for p in preds[name]):
                order.append(name)
    state: dict[str, torch.Tensor] = {}
    outputs = []
    for _ in range(steps):
        value: dict[str, torch.Tensor] = {}
        for name in order:
            node = graph.nodes[name]
            kind = type(node).__name__
            inp = sum(value[p] for p in preds[name]) if preds[name] else None
            if kind == "Input":
                out = x
            elif kind == "Output":
                out = inp
                outputs.append(out)
            elif kind == "Conv2d":
                out = F.conv2d(inp, t(node.weight), t(node.bias), tuple(node.stride), tuple(node.padding),
                               tuple(node.dilation), int(node.groups))
            elif kind == "Conv1d":
                padding = node.padding if isinstance(node.padding, str) else int(np.atleast_1d(node.padding)[0])
                out = F.conv1d(inp, t(node.weight), t(node.bias), int(np.atleast_1d(node.stride)[0]), padding,
                               int(np.atleast_1d(node.dilation)[0]), int(node.groups))
            elif kind == "Affine":
                out = inp @ t(node.weight).T + t(node.bias)
            elif kind == "SumPool2d":
                out = F.avg_pool2d(inp, tuple(node.kernel_size), tuple(node.stride), tuple(node.padding),
                                   divisor_override=1)
            elif kind == "Flatten":
                out = inp.flatten(int(node.start_dim) + 1, int(node.end_dim) + 1 if node.end_dim >= 0 else -1)
            elif kind == "Scale":
                out = inp * t(node.scale)
            elif kind == "IF":
                if name not in state:
                    state[name] = torch.full_like(inp, float(_meta(node, "initial_potential", 0.0)))
                v = state[name] + t(node.r) * inp
                fire = v >= t(node.v_threshold) if _meta(node, "threshold_comparison", ">") == ">=" else v > t(node.v_threshold)
                out = fire.double()
                if _meta(node, "reset", "value") == "subtract":
                    v = v - t(node.v_threshold) * out
                else:
                    v = torch.where(fire, t(node.v_reset), v)
                state[name] = v
            else:
                raise AssertionError(f"interpreter has no {kind}")
            value[name] = out
    return torch.stack(outputs)


def test_round_trip_matches_simulate(tmp_path):
    model, x = make_source("small_cnn", "qcfs", batch=5, dtype=torch.float64)
    snn = convert(model, "if")
    path = tmp_path / "net.nir"
    with pytest.warns(NIRSemanticsWarning, match="metadata"):
        export_nir(snn, path, tuple(x.shape[1:]))
    graph = nir.read(str(path))
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert "SumPool2d" in kinds and "AvgPool2d" not in kinds and "Scale" not in kinds
    assert all(_meta(n, "reset", None) == "subtract" for n in graph.nodes.values() if type(n).__name__ == "IF")
    steps = 12
    expected = simulate(snn, x, steps)
    got = run_nir(graph, x, steps)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert expected.abs().sum() > 0


def test_adaptive_pool_with_overlapping_uniform_bins(tmp_path):
    """7x7 -> 2x2 adaptive pooling has bins [0, 4) and [3, 7): SumPool2d(4, stride 3)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), QCFS(4, threshold=1.0), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(12, 4), QCFS(4, threshold=0.5), nn.Linear(4, 3)).double().eval()
    x = torch.rand(4, 1, 7, 7, dtype=torch.float64)
    snn = convert(model, "if")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NIRSemanticsWarning)
        export_nir(snn, tmp_path / "a.nir", (1, 7, 7))
    graph = nir.read(str(tmp_path / "a.nir"))
    assert torch.allclose(run_nir(graph, x, 8), simulate(snn, x, 8), atol=1e-9)


@pytest.mark.parametrize("neuron, options, why", [
    ("gn", {"group_size": 4}, "counts"), ("cif", {}, "ternary"), ("tpp", {}, "two-phase"),
])
def test_neurons_without_nir_primitive_are_refused(neuron, options, why, tmp_path):
    model, x = make_source("small_cnn", "qcfs", batch=2, dtype=torch.float32)
    with pytest.raises(SnnconvError, match=why):
        export_nir(convert(model, neuron, **options), tmp_path / "x.nir", (1, 8, 8))
    assert not (tmp_path / "x.nir").exists()


def test_residual_network_is_refused_with_reason(tmp_path):
    model, x = make_source("resnet18", "qcfs", batch=1, dtype=torch.float32, in_channels=3, size=8) \
        if "resnet18" in __import__("snnconv").list_models() else (None, None)
    if model is None:
        pytest.skip("no resnet18 registered")
    with pytest.raises(SnnconvError, match="chains only"):
        export_nir(convert(model, "if"), tmp_path / "r.nir", (3, 8, 8), warn=False)


def test_cli_export(digits_source, tmp_path, capsys):
    from snnconv.cli import main

    *_, checkpoint = digits_source
    out = tmp_path / "digits.nir"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NIRSemanticsWarning)
        assert main(["export", str(checkpoint), "--format", "nir", "--out", str(out)]) == 0
    graph = nir.read(str(out))
    assert type(graph.nodes["input"]).__name__ == "Input"
    assert main(["export", str(checkpoint), "--format", "nir", "--neuron", "gn", "--out", str(out)]) == 2
    assert "binary spikes" in capsys.readouterr().err


# The table of operations: every op with a NIR form exports and runs like simulate(), in
# every spelling; an op without one is refused with its layer named.
class _Chain(nn.Module):
    """conv(2 -> 3) -> QCFS -> f -> flatten (if still spatial) -> linear; ``conv1d=True``: on [2, 16]."""

    def __init__(self, f, features: int, conv1d: bool = False, flat: bool = False) -> None:
        super().__init__()
        self.flat = flat
        torch.manual_seed(3)
        self.conv = nn.Conv1d(2, 3, 3, padding=1) if conv1d else nn.Conv2d(2, 3, 3, padding=1)
        self.act = QCFS(4, threshold=0.3)
        self.f = f if isinstance(f, nn.Module) else None
        self._fn = None if isinstance(f, nn.Module) else f
        self.fc = nn.Linear(features, 4)

    def forward(self, x):
        h = self.act(self.conv(x))
        h = self.f(h) if self.f is not None else self._fn(h)
        return self.fc(h if self.flat else torch.flatten(h, 1))


NIR_SPELLINGS = {
    "conv2d": [nn.Identity()],  # the chain's own first layer
    "conv1d": [nn.Identity()],
    "linear": [nn.Flatten()],  # the chain's last layer
    "avg_pool2d": [nn.AvgPool2d(2)],
    "adaptive_avg_pool2d": [nn.AdaptiveAvgPool2d(2)],
    "flatten": [nn.Flatten(), lambda h: torch.flatten(h, 1), lambda h: h.flatten(1)],
    "reshape": [lambda h: h.view(-1, 192), lambda h: h.reshape(-1, 192), lambda h: torch.reshape(h, (-1, 192))],
    "identity": [nn.Identity(), lambda h: h.contiguous()],
}


def test_every_nir_form_of_the_table_is_covered():
    from snnconv.convert.ops import OPS

    assert {op.name for op in OPS if op.nir and op.kind != "activation"} == set(NIR_SPELLINGS)


@pytest.mark.parametrize("name", sorted(NIR_SPELLINGS))
def test_each_nir_form_round_trips_in_every_spelling(name, tmp_path):
    from snnconv.export.nir import read_nir

    conv1d = name == "conv1d"
    x = torch.rand(3, 2, *((16,) if conv1d else (8, 8)), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for i, f in enumerate(NIR_SPELLINGS[name]):
        with torch.no_grad():
            h = torch.zeros(1, 3, *x.shape[2:])
            out = f(h)
        snn = convert(_Chain(f, out.flatten(1).shape[1], conv1d, flat=out.dim() == 2).double().eval(), "if")
        export_nir(snn, tmp_path / f"{i}.nir", tuple(x.shape[1:]), warn=False)
        graph = read_nir(tmp_path / f"{i}.nir")
        expected = simulate(snn, x, 8)
        assert expected.abs().sum() > 0
        assert torch.allclose(run_nir(graph, x, 8), expected, rtol=1e-9, atol=1e-9), (name, i)


@pytest.mark.parametrize("layer, what", [
    (nn.ZeroPad2d(1), "ZeroPad2d"), (nn.ConvTranspose2d(3, 3, 2, stride=2), "ConvTranspose2d"),
    (nn.Upsample(scale_factor=2), "Upsample"), (nn.BatchNorm2d(3), "ChannelAffine"),
])
def test_ops_without_nir_form_are_refused_by_name(layer, what, tmp_path):
    from snnconv.convert.ops import op_of_module

    with torch.no_grad():
        features = layer.eval()(torch.zeros(1, 3, 8, 8)).flatten(1).shape[1]
    snn = convert(_Chain(layer, features).double().eval(), "if")
    modules = dict(snn.graph.named_modules())
    op = op_of_module(modules["f"])
    assert op.nir is None and op.nir_note
    with pytest.raises(SnnconvError, match=rf"^layer 'f' \({what}\) has no NIR export: use conv/linear/average-pool/flatten layers$"):
        export_nir(snn, tmp_path / "x.nir", (2, 8, 8), warn=False)

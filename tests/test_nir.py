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

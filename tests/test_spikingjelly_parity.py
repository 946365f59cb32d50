"""Fairness check for bench/speed.py: SpikingJelly's converted IF network and ours emit
the same spikes on the same input, threshold and initial potential (v(0) = 0).

Skipped when the optional benchmark dependency spikingjelly is absent.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from torch import nn

from snnconv import QCFS, SpikeCounter, convert, create_model, simulate

from helpers import randomize_batchnorm, spread_thresholds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import sj_bridge  # noqa: E402

pytestmark = pytest.mark.skipif(not sj_bridge.available(), reason="spikingjelly (optional benchmark dependency) not installed")


class _TinyResidual(nn.Module):
    """conv-bn-QCFS, a residual block whose addition feeds a neuron, pooling, linear:
    the shapes of ResNet-20 in a network small enough for a seconds-long test."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), QCFS(4))
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), QCFS(4), nn.Conv2d(8, 8, 3, padding=1))
        self.act = QCFS(4)
        self.head = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))

    def forward(self, x):
        h = self.stem(x)
        return self.head(self.act(self.body(h) + h))


class _Spikes(SpikeCounter):
    """Keeps every spiking layer's output window."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[torch.Tensor] = []

    def record(self, name, neuron, out):
        self.windows.append(out / neuron.threshold.to(out.dtype))


@pytest.mark.parametrize("model_name", ["small_cnn", "residual"])
def test_same_spikes_as_spikingjelly(model_name):
    g = torch.Generator().manual_seed(0)
    if model_name == "small_cnn":
        channels, size = 1, 12
        model = create_model("small_cnn", in_channels=1, activation="qcfs", levels=4, width=8).eval()
    else:
        channels, size = 3, 8
        model = _TinyResidual().eval()
    randomize_batchnorm(model, g)
    x = torch.randn(4, channels, size, size, generator=g)
    spread_thresholds(model, x)

    ours = convert(model, "if", initial_potential=0.0)  # SpikingJelly's IFNode starts at v = 0
    theirs = sj_bridge.convert(sj_bridge.relu_copy(model), x, "99.9%")
    sj_bridge.match_thresholds(theirs, ours)

    steps = 6
    recorder = _Spikes()
    out = simulate(ours, x, steps, recorder=recorder)
    sj_spikes: list[list[torch.Tensor]] = [[] for _ in sj_bridge.if_nodes(theirs)]
    hooks = [node.register_forward_hook(lambda m, i, o, k=k: sj_spikes[k].append(o.detach().clone()))
             for k, node in enumerate(sj_bridge.if_nodes(theirs))]
    try:
        sj_out = sj_bridge.simulate(theirs, x, steps)
    finally:
        for h in hooks:
            h.remove()

    assert len(recorder.windows) == len(sj_spikes) == len(ours.spiking_layers())
    total = 0.0
    for layer, (mine, theirs_steps) in enumerate(zip(recorder.windows, sj_spikes)):
        assert torch.equal(mine, torch.stack(theirs_steps)), f"spiking layer {layer} differs"
        total += float(mine.sum())
    assert total > 0  # the check means something only if neurons fire
    assert torch.equal(out, sj_out)

"""The simulation engine: chunking, static first layer, permutation, sleep schedule, inputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from snnconv import ClipFloor, SnnconvError, SpikeCounter, convert, simulate
from snnconv.engine import bytes_per_sample, permute_window

from helpers import make_source


@pytest.mark.parametrize("neuron", ["if", "gn", "tpp", "cif"])
def test_chunked_equals_unchunked(neuron):
    model, x = make_source("small_cnn", "qcfs", batch=12, dtype=torch.float32)
    snn = convert(model, neuron)
    full = simulate(snn, x, 6)
    chunked = simulate(snn, x, 6, memory_budget=bytes_per_sample(snn, x, 6))  # one sample per chunk
    if neuron == "tpp":  # random draws are per chunk: compare structure, not spikes
        assert chunked.shape == full.shape
    else:
        assert torch.equal(full, chunked)


def test_cpu_chunks_are_cache_sized_by_default_and_keep_results():
    from snnconv.engine import CPU_WINDOW_BYTES, _largest_activation

    model, x = make_source("small_cnn", "qcfs", batch=12, dtype=torch.float32)
    snn = convert(model, "if")
    window = _largest_activation(snn, x) * 6 * 4  # bytes of the largest float32 window per sample, T = 6
    seen = []
    handle = snn.spiking_layers()[0][1].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        per_three = simulate(snn, x, 6, window_bytes=3 * window)
        assert seen == [3, 3, 3, 3]
        seen.clear()
        whole = simulate(snn, x, 6, window_bytes=None)
        assert seen == [12]
        seen.clear()
        auto = simulate(snn, x, 6)
        assert seen[0] == min(12, max(1, CPU_WINDOW_BYTES // window))
    finally:
        handle.remove()
    assert torch.equal(per_three, whole) and torch.equal(auto, whole)


@pytest.mark.parametrize("bad", [0, -5, 2.5, "big", True])
def test_bad_window_bytes_is_refused(bad):
    model, x = make_source("small_cnn", "qcfs", batch=2, dtype=torch.float32)
    with pytest.raises(SnnconvError, match="window_bytes"):
        simulate(convert(model, "if"), x, 2, window_bytes=bad)


def test_first_layer_runs_once_on_constant_input():
    model, x = make_source("small_cnn", "qcfs", batch=3, dtype=torch.float32)
    snn = convert(model, "if")
    first_conv = snn.graph.get_submodule("0.0")
    seen = []
    first_conv.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    simulate(snn, x, 8, memory_budget=1 << 40)
    assert seen[-1] == 3  # batch, not T * batch


def test_permutation_preserves_every_spike_count():
    g = torch.Generator().manual_seed(0)
    window = (torch.rand(8, 5, 3, 4, generator=g) < 0.3).float()
    for mode in ("per-neuron", "per-layer"):
        shuffled = permute_window(window, mode, torch.Generator().manual_seed(1))
        assert torch.equal(shuffled.sum(0), window.sum(0))
        assert not torch.equal(shuffled, window)
    # per-layer moves whole time slices of a sample together
    per_layer = permute_window(window, "per-layer", torch.Generator().manual_seed(2))
    sample_slices = {tuple(window[t, 0].flatten().tolist()) for t in range(8)}
    assert all(tuple(per_layer[t, 0].flatten().tolist()) in sample_slices for t in range(8))


def test_permuted_network_keeps_spike_counts_per_layer():
    model, x = make_source("small_cnn", "qcfs", batch=4, dtype=torch.float32)
    plain, shuffled = SpikeCounter(), SpikeCounter()
    simulate(convert(model, "if"), x, 8, recorder=plain)
    simulate(convert(model, "if"), x, 8, permute="per-neuron", recorder=shuffled)
    first = next(iter(plain.events))
    # the first spiking layer sees the same (constant) input: identical counts
    assert plain.events[first].sum() == shuffled.events[first].sum()


def test_same_seed_same_output_for_stochastic_runs():
    model, x = make_source("small_cnn", "qcfs", batch=4, dtype=torch.float32)
    snn = convert(model, "tpp")
    assert torch.equal(simulate(snn, x, 4, seed=3), simulate(snn, x, 4, seed=3))
    assert not torch.equal(simulate(snn, x, 4, seed=3), simulate(snn, x, 4, seed=4))


def test_sleep_turns_biases_off():
    """Wake: input and biases on; sleep: both off. The readout then equals the ANN exactly,
    which it would not if the readout layer's bias kept being added in sleep."""
    model = nn.Sequential(nn.Linear(2, 3), ClipFloor(4, threshold=1.0), nn.Linear(3, 2)).double().eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(0.6)  # 4 wake steps of 0.6 -> floor(2.4) = 2 spikes
    x = torch.zeros(1, 2, dtype=torch.float64)
    out = simulate(convert(model, "cif"), x, 4, sleep_steps=5)
    assert out.shape == (9, 1, 2)
    ann = model(x)
    assert torch.allclose(out.sum(0) / 4, ann, atol=1e-12)
    assert torch.allclose(out[4:], torch.zeros_like(out[4:]))  # nothing left to do in sleep here


@pytest.mark.parametrize(
    "bad,match",
    [
        (lambda x: x.long(), "floating"),
        (lambda x: x.fill_(float("nan")), "NaN"),
        (lambda x: x[0, 0, 0], "shape"),
        (lambda x: x[:, :, :3], "layer"),
    ],
)
def test_bad_inputs(bad, match):
    model, x = make_source("small_cnn", "qcfs", batch=2, dtype=torch.float32)
    snn = convert(model, "if")
    with pytest.raises(SnnconvError, match=match):
        simulate(snn, bad(x.clone()), 4)


@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_bad_steps(steps):
    model, x = make_source("small_cnn", "qcfs", batch=2, dtype=torch.float32)
    with pytest.raises(SnnconvError, match="T"):
        simulate(convert(model, "if"), x, steps)


def test_sleep_needs_cif_and_excludes_permutation():
    model, x = make_source("small_cnn", "qcfs", batch=2, dtype=torch.float32)
    with pytest.raises(SnnconvError, match="sleep"):
        simulate(convert(model, "if"), x, 4, sleep_steps=2)
    with pytest.raises(SnnconvError, match="permutation and sleep"):
        simulate(convert(model, "cif"), x, 4, sleep_steps=2, permute="per-layer")


def test_stop_when_quiet_drops_only_steps_that_change_nothing():
    model, x = make_source("small_cnn", "clipfloor", batch=4)
    snn = convert(model, "cif")
    full = simulate(snn, x, 4, sleep_steps=40)
    short = simulate(snn, x, 4, sleep_steps=40, stop_when_quiet=True)
    used = short.shape[0]
    assert 4 < used < 44
    assert torch.equal(short, full[:used])
    assert torch.count_nonzero(full[used:]) == 0  # the dropped steps add nothing
    assert torch.count_nonzero(full[used - 1]) > 0


@pytest.mark.parametrize("neuron,kw", [("if", {}), ("gn", {}), ("tpp", {}), ("cif", {"sleep_steps": 3})])
def test_inplace_windows_change_nothing(neuron, kw, monkeypatch):
    """The engine lets a neuron overwrite its input window only when nobody else reads it:
    a residual net (a window read by a neuron and by an addition) gives the same outputs
    with the in-place path switched off, and the input is left untouched."""
    from snnconv.neurons import SpikingNeuron

    from snnconv.activations import make_activation

    act = "clipfloor" if neuron == "cif" else "qcfs"

    class Residual(nn.Module):  # identity shortcut: the stem neuron's window has two readers
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), make_activation(act, 4, 1.0))
            self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), make_activation(act, 4, 1.0), nn.Conv2d(6, 6, 3, padding=1))
            self.act = make_activation(act, 4, 1.0)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 25, 3))

        def forward(self, x):
            h = self.stem(x)
            s = self.body(h) + h
            return self.head(self.act(s) + s)  # s: read by a neuron and by the addition

    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.rand(3, 3, 5, 5) * 2
    snn = convert(model, neuron)
    x_before = x.clone()
    fast = simulate(snn, x, 4, seed=1, **kw)
    assert torch.equal(x, x_before)
    for cls in {type(m) for _, m in snn.spiking_layers()}:
        monkeypatch.setattr(cls, "supports_inplace", False)
    assert not any(m.supports_inplace for _, m in snn.spiking_layers())
    assert torch.equal(fast, simulate(snn, x, 4, seed=1, **kw))
    assert SpikingNeuron.supports_inplace is False


def test_nan_weights_are_refused_once_per_simulation():
    model, x = make_source("small_cnn", "qcfs", batch=2, dtype=torch.float32)
    snn = convert(model, "if")
    next(snn.graph.parameters()).data[0] = float("nan")
    with pytest.raises(SnnconvError, match="NaN or inf"):
        simulate(snn, x, 2)

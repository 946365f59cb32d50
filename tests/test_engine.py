"""The simulation engine: chunking, static first layer, permutation, sleep schedule, inputs."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chi2
from torch import nn

from snnconv import ClipFloor, SnnconvError, SpikeCounter, convert, simulate
from snnconv.engine import bytes_per_sample, permute_window

from helpers import make_source


@pytest.mark.parametrize("neuron", ["if", "gn", "cif"])
def test_chunked_equals_unchunked(neuron):
    model, x = make_source("small_cnn", "qcfs", batch=12, dtype=torch.float32)
    snn = convert(model, neuron)
    full = simulate(snn, x, 6)
    chunked = simulate(snn, x, 6, memory_budget=bytes_per_sample(snn, x, 6))  # one sample per chunk
    assert torch.equal(full, chunked)


def _tpp_run(snn, x, steps, phi, **kw):
    """Simulate, and per spiking layer return (owed, count) per neuron, batch-concatenated
    over chunks: owed = sum_t x(t) / theta + phi (read before the window may be overwritten),
    count = spikes emitted. Also returns the number of chunks the first layer saw."""
    owed, count = {}, {}
    handles = []
    for name, m in snn.spiking_layers():
        handles.append(m.register_forward_pre_hook(
            lambda m, args, name=name, phi=phi: owed.setdefault(name, []).append(args[0].sum(0) / m.threshold + phi)))

        def spikes(m, args, out, name=name):
            assert bool(((out == 0) | (out == m.threshold)).all()), name  # values in {0, theta}
            count.setdefault(name, []).append((out != 0).sum(0).to(out.dtype))

        handles.append(m.register_forward_hook(spikes))
    try:
        out = simulate(snn, x, steps, **kw)
    finally:
        for h in handles:
            h.remove()
    chunks = len(next(iter(owed.values())))
    return out, {n: torch.cat(v, 0) for n, v in owed.items()}, {n: torch.cat(v, 0) for n, v in count.items()}, chunks


def test_chunked_tpp_keeps_samples_and_the_two_phase_bound():
    """TPP draws per chunk, so chunked and whole runs differ spike by spike; what must hold
    in both (docs/methods.md section 4): a neuron owed u / theta = m + f spikes emits
    floor or ceil of it (exactly m when f = 0, none when u <= 0, T when u >= T theta), in
    every layer; and chunking keeps each sample's input: the first layer (static input) is
    owed the same amounts neuron by neuron."""
    model, x = make_source("small_cnn", "qcfs", batch=12)
    phi, steps = 0.5, 6
    snn = convert(model, "tpp", initial_potential=phi)
    one_sample = bytes_per_sample(snn, x, steps)  # probes the graph once, before the hooks
    full, owed_full, count_full, chunks_full = _tpp_run(snn, x, steps, phi, seed=0, window_bytes=None, memory_budget=1 << 40)
    chunked, owed_chunked, count_chunked, chunks = _tpp_run(snn, x, steps, phi, seed=0, memory_budget=one_sample)
    assert (chunks_full, chunks) == (1, 12)
    assert chunked.shape == full.shape == (steps, 12, 10)
    first = snn.spiking_layers()[0][0]
    assert torch.allclose(owed_chunked[first], owed_full[first], rtol=0, atol=1e-9)
    for owed, count in ((owed_full, count_full), (owed_chunked, count_chunked)):
        assert list(count) == [n for n, _ in snn.spiking_layers()]
        for name in count:
            u = owed[name].clamp(0, steps)
            assert bool((count[name] >= (u - 1e-9).floor()).all()), name
            assert bool((count[name] <= (u + 1e-9).ceil()).all()), name
    # the bound leaves room: both outcomes occur, so the check above is not vacuous
    u, c = owed_full[first].clamp(0, steps), count_full[first]
    fractional = (u - u.round()).abs() > 1e-3
    assert bool((c[fractional] == u[fractional].floor()).any()) and bool((c[fractional] == u[fractional].ceil()).any())


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


@pytest.mark.parametrize(
    "bad,match",
    [
        (0, "window_bytes must be a positive byte count, 'auto' or None, got 0"),
        (-5, "window_bytes must be a positive byte count, 'auto' or None, got -5"),
        (2.5, "window_bytes must be an integer, got 2.5"),
        ("big", "window_bytes must be an integer, got 'big'"),
        (True, "window_bytes must be an integer, got True"),
    ],
)
def test_bad_window_bytes_is_refused(bad, match):
    model, x = make_source("small_cnn", "qcfs", batch=2, dtype=torch.float32)
    with pytest.raises(SnnconvError, match=match):
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


class _Windows:
    """Recorder keeping every layer's window as the next layer reads it."""

    def __init__(self):
        self.windows = {}

    def record(self, name, neuron, out):
        self.windows[name] = out.clone()


@pytest.mark.parametrize("mode", ["per-neuron", "per-layer"])
def test_permutation_reorders_every_layer_and_keeps_its_counts(mode):
    """In every spiking layer the permuted window (what the next layer reads) holds each
    neuron's own spikes, same count, in a new order; compared with the unpermuted run the
    first layer (same static input) fires identically and every later layer differently,
    since it reads shuffled trains."""
    model, x = make_source("small_cnn", "qcfs", batch=4, dtype=torch.float32)
    plain = _Windows()
    simulate(convert(model, "if"), x, 8, recorder=plain)
    snn = convert(model, "if")
    names = [n for n, _ in snn.spiking_layers()]
    own = {}  # each neuron's output before the engine permutes it
    handles = [m.register_forward_hook(lambda m, a, o, name=n: own.__setitem__(name, o.clone())) for n, m in snn.spiking_layers()]
    shuffled = _Windows()
    try:
        simulate(snn, x, 8, permute=mode, recorder=shuffled, seed=0)
    finally:
        for h in handles:
            h.remove()
    assert list(shuffled.windows) == list(plain.windows) == names and len(names) == 4
    for i, name in enumerate(names):
        before, after = own[name], shuffled.windows[name]
        assert torch.equal(after.sum(0), before.sum(0)), name  # every neuron keeps its count
        # every neuron that fires at some steps but not all has its train reordered (almost always)
        partial = ((before != 0).any(0) & (before == 0).any(0)).flatten()
        assert int(partial.sum()) > 100, name
        moved = (after != before).any(0).flatten()[partial].double().mean()
        assert moved > 0.5, (name, float(moved))
        if i == 0:
            assert torch.equal(before, plain.windows[name])  # same input, same spikes
            assert torch.equal(after.sum(0), plain.windows[name].sum(0))
        else:
            assert not torch.equal(before, plain.windows[name]), name  # it read permuted trains


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
        (lambda x: x.long(), "input is torch.int64, not floating point: scale it to floats first"),
        (lambda x: x.fill_(float("nan")), "input contains NaN or inf: clean the data first"),
        (lambda x: x[0, 0, 0], r"input must have shape \[batch, \.\.\.\] with batch >= 1, got \(8,\): add the batch dimension"),
        (lambda x: x[:, :, :3], r"layer '[^']+' failed on its input \(.*\); check the input shape"),
    ],
)
def test_bad_inputs(bad, match):
    model, x = make_source("small_cnn", "qcfs", batch=2, dtype=torch.float32)
    snn = convert(model, "if")
    with pytest.raises(SnnconvError, match=match):
        simulate(snn, bad(x.clone()), 4)


@pytest.mark.parametrize(
    "steps,match", [(0, "T must be >= 1, got 0"), (-1, "T must be >= 1, got -1"), (2.5, r"T \(steps\) must be an integer, got 2.5")]
)
def test_bad_steps(steps, match):
    model, x = make_source("small_cnn", "qcfs", batch=2, dtype=torch.float32)
    with pytest.raises(SnnconvError, match=match):
        simulate(convert(model, "if"), x, steps)


def test_sleep_needs_cif_and_excludes_permutation():
    model, x = make_source("small_cnn", "qcfs", batch=2, dtype=torch.float32)
    with pytest.raises(SnnconvError, match=r"sleep steps need neurons that sleep \(cif\); 'if' does not"):
        simulate(convert(model, "if"), x, 4, sleep_steps=2)
    with pytest.raises(SnnconvError, match="permutation and sleep steps do not combine: use one or the other"):
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
    with pytest.raises(SnnconvError, match="the network's '[^']+' contains NaN or inf: check the source model's weights"):
        simulate(snn, x, 2)


def _argsort_per_layer(window: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The per-layer shuffle as first written: T keys per sample, expanded, argsorted."""
    steps, batch = window.shape[:2]
    keys = torch.rand((steps, batch), generator=generator).reshape(steps, batch, *([1] * (window.dim() - 2)))
    return window.gather(0, keys.expand_as(window).argsort(dim=0))


def _biased_shuffle(window: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """The textbook mistake: swap step i with j uniform on 0..T-1 (not 0..i)."""
    steps = window.shape[0]
    flat = window.clone(memory_format=torch.contiguous_format).view(steps, -1)
    for i in range(steps - 1, 0, -1):
        j = torch.randint(0, steps, (1, flat.shape[1]), generator=generator)
        held = flat[i].clone()
        flat[i] = flat.gather(0, j)[0]
        flat.scatter_(0, j, held.unsqueeze(0))
    return flat.view(window.shape)


def _order_chi2(steps: int, mode: str, shuffle=permute_window, shuffles: int = 240_000) -> float:
    """Pearson's chi-square of how often each of the T! orders comes out, shuffling
    0..T-1 in every neuron (or sample); infinite if an order is missing or a non-order appears."""
    window = torch.arange(steps, dtype=torch.float64).reshape(steps, 1, 1).expand(steps, shuffles, 1)
    shuffled = shuffle(window, mode, torch.Generator().manual_seed(0))[:, :, 0].long()
    counts = torch.bincount(sum(shuffled[t] * steps**t for t in range(steps)), minlength=steps**steps)
    orders = counts[counts > 0]
    if orders.numel() != math.factorial(steps):
        return math.inf
    expected = shuffles / orders.numel()
    return float(((orders - expected) ** 2 / expected).sum())


def _chi2_9999(dof: int) -> float:
    """The 99.99% quantile of chi-square with ``dof`` degrees of freedom (18.4, once
    written here for T = 3, is the 99.75% one of 5 dof)."""
    return float(chi2.ppf(0.9999, dof))


@pytest.mark.parametrize("mode", ["per-neuron", "per-layer"])
@pytest.mark.parametrize("steps", [3, 4])
def test_every_order_is_equally_likely(mode, steps):
    """Uniform over the T! orders: Pearson's chi-square over 240,000 shuffles stays below
    its 99.99% quantile."""
    assert _order_chi2(steps, mode) < _chi2_9999(math.factorial(steps) - 1)


@pytest.mark.parametrize("steps", [3, 4])
def test_the_order_check_rejects_a_biased_shuffle(steps):
    """The check above has the power to fail: the textbook biased shuffle scores over 26,000."""
    assert _order_chi2(steps, "per-neuron", _biased_shuffle) > 26_000


def test_every_step_reaches_every_position_at_large_t():
    """At T = 64 the step that started at t ends at each position p with probability 1/64.

    Each neuron adds a random permutation matrix to the T x T table, so Pearson's
    statistic is asymptotically T / (T - 1) times a chi-square with (T - 1)^2 degrees of
    freedom (mean T (T - 1), not (T - 1)^2); the bound is that scaled 99.99% quantile."""
    steps, neurons = 64, 64_000
    window = torch.arange(steps, dtype=torch.float32).reshape(steps, 1, 1).expand(steps, neurons, 1)
    shuffled = permute_window(window, "per-neuron", torch.Generator().manual_seed(0))[:, :, 0].long()
    assert torch.equal(shuffled.sort(0).values, torch.arange(steps)[:, None].expand_as(shuffled))  # each train permuted
    table = torch.zeros(steps, steps).index_put_((shuffled, torch.arange(steps)[:, None].expand_as(shuffled)),
                                                 torch.ones(()), accumulate=True)
    expected = neurons / steps
    score = float(((table - expected) ** 2 / expected).sum())
    assert score < steps / (steps - 1) * _chi2_9999((steps - 1) ** 2), score


def test_per_layer_draws_what_it_drew_before():
    """The per-layer shuffle sorts T keys per sample, no longer the keys expanded to the
    whole window: same generator, same orders, so earlier per-layer tables still reproduce."""
    window = torch.rand(8, 6, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    now = permute_window(window, "per-layer", torch.Generator().manual_seed(4))
    assert torch.equal(now, _argsort_per_layer(window, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("mode", ["per-neuron", "per-layer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.bool])
def test_permutation_leaves_its_input_alone(mode, dtype):
    """Any dtype, a non-contiguous window, T = 1: the input is untouched and every
    neuron's multiset of values is kept."""
    base = torch.rand(5, 7, 4, generator=torch.Generator().manual_seed(0)) < 0.5
    window = base.to(dtype).transpose(1, 2)  # [T, 4, 7], not contiguous
    before = window.clone()
    out = permute_window(window, mode, torch.Generator().manual_seed(1))
    assert torch.equal(window, before) and out.dtype == dtype and out.shape == window.shape
    assert torch.equal(out.sort(0).values, window.sort(0).values)
    one = window[:1]
    assert torch.equal(permute_window(one, mode, torch.Generator().manual_seed(1)), one)

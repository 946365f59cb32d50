"""Property-based checks: bad input never produces a silent wrong answer.

Every registered neuron and :func:`snnconv.simulate` get random shapes, dtypes,
thresholds, T values and options, valid and not. Each call must either return a correct
result (same shape and dtype, finite, whole spike units within the neuron's range) or
raise one clear :class:`SnnconvError`; input that is plainly valid must not be refused and
input that is plainly invalid must not be accepted.
"""
from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, seed, settings
from hypothesis import strategies as st

from torch import nn

from snnconv import QCFS, SnnconvError, convert, create_neuron, list_neurons, simulate
from snnconv.engine import bytes_per_sample
from snnconv.functional import compute_dtype

from neuron_reference import cif_reference, group_reference, tpp_total_bounds


# Fixed seeds: the same examples on every run (no flaky CI); generous deadlines for busy CI machines.
SETTINGS = dict(deadline=timedelta(seconds=10), suppress_health_check=[HealthCheck.too_slow], database=None)

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DTYPES = FLOATS + [torch.int32, torch.int64, torch.bool]

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: tiny tensors gain nothing from more, and busy CI machines lose a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# What the spec allows each neuron to emit per element and step, in spike units
# (independent of the neurons' own ``spike_range`` property, which is checked against it).
EXPECTED_RANGE = {
    "if": lambda options: (0, 1),
    "gn": lambda options: (0, options.get("group_size", 4)),
    "tpp": lambda options: (0, 1),
    "cif": lambda options: (-1, 1),
}

NORMAL_THRESHOLDS = st.floats(0.05, 20.0)
ODD_THRESHOLDS = st.sampled_from(
    [0.0, -1.0, -1e-30, math.nan, math.inf, -math.inf, 1e-45, 1e-30, 1e-6, 1e4, 1e6, 1e30, 1e300, "x", None]
)
BAD_VALUES = st.sampled_from([0, -1, 2.5, "x", None, math.nan, math.inf, -0.5, 1.5, True, [1]])


def mostly(draw, good, bad, bad_in_ten: int = 2):
    """Draw from ``bad`` about ``bad_in_ten`` times in ten, else from ``good``."""
    return draw(bad if draw(st.sampled_from([False] * (10 - bad_in_ten) + [True] * bad_in_ten)) else good)


VALID_OPTIONS = {
    "group_size": st.integers(1, 6),
    "initial_potential": st.one_of(st.floats(0.0, 1.0), st.sampled_from([0, 1])),
    "target_steps": st.integers(1, 4),
    "negative_spikes": st.booleans(),
    "spike_cap": st.booleans(),
}


def _threshold_ok(threshold) -> bool:
    return isinstance(threshold, float) and math.isfinite(threshold) and threshold > 0


def _option_ok(name: str, key: str, value) -> bool:
    if key == "group_size":  # counts must stay exact in float32: at most 2**24 members
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 2**24
    if key == "initial_potential":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    if key == "target_steps":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return isinstance(value, bool)


@st.composite
def neuron_calls(draw):
    from snnconv.neurons import neuron_options

    name = draw(st.sampled_from(list_neurons()))
    keys = draw(st.lists(st.sampled_from(neuron_options(name)), unique=True, max_size=3)) if neuron_options(name) else []
    options = {key: mostly(draw, VALID_OPTIONS.get(key, st.booleans()), BAD_VALUES, 1) for key in keys}
    threshold = mostly(draw, NORMAL_THRESHOLDS, ODD_THRESHOLDS, 3)
    dtype = mostly(draw, st.sampled_from(FLOATS), st.sampled_from([torch.int32, torch.int64, torch.bool]), 1)
    steps = mostly(draw, st.integers(1, 6), st.just(0), 1)
    shape = (steps, *draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    scale = mostly(draw, st.sampled_from([1.0, 3.0]), st.sampled_from([1e-3, 1e4, 1e30]), 2)
    rng_seed = draw(st.integers(0, 2**31))
    wake = mostly(draw, st.one_of(st.none(), st.integers(1, 8)), st.integers(-1, 0), 1) if name == "cif" else None
    return name, options, threshold, dtype, shape, scale, rng_seed, wake


def _window(shape, dtype, scale, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if dtype.is_floating_point:
        return values.to(dtype)
    return values.round().clamp(-5, 5).to(dtype)


def _comfortable(x: torch.Tensor, threshold: float, units: int) -> bool:
    """Threshold and inputs far inside the dtype's range: refusing would be wrong."""
    info = torch.finfo(x.dtype)
    largest = float(x.double().abs().max()) if x.numel() else 0.0
    work = torch.finfo(compute_dtype(x.dtype))
    return (
        threshold / units > info.tiny * 1e3
        and threshold < info.max / 1e3
        and x.shape[0] * largest * units / threshold < work.max / 1e3
    )


def _clear(err: SnnconvError) -> str:
    message = str(err)
    assert message and "\n" not in message and len(message) < 400, message
    return message


# The cases that once went wrong, always run (name, options, threshold, dtype, shape, scale, seed, wake):
@example(("if", {}, "x", torch.float32, (2, 3), 1.0, 0, None))  # TypeError, not a clear error
@example(("gn", {"initial_potential": "x"}, 1.0, torch.float32, (2, 3), 1.0, 0, None))  # ValueError
@example(("gn", {"group_size": 2**70}, 1.0, torch.float16, (2, 3), 1.0, 0, None))  # OverflowError
@example(("cif", {"negative_spikes": "no"}, 1.0, torch.float32, (2, 3), 1.0, 0, None))  # silently True
@example(("cif", {}, 1.0, torch.float32, (3, 2), 1.0, 0, -1))  # a negative wake count ran
@example(("if", {}, 1e5, torch.float16, (2, 3), 1.0, 0, None))  # theta overflows float16: NaN out
@example(("tpp", {}, 1e-6, torch.float16, (2, 3), 1.0, 0, None))  # theta underflows float16: NaN out
@example(("gn", {}, 0.5, torch.float32, (4, 2), 1e30, 0, None))  # inf - inf in the potential
@example(("if", {"initial_potential": 0.5}, 1.0, torch.bfloat16, (3, 2), 1e-3, 0, None))
# The largest windows the strategy draws, with many spikes: the reference comparison has
# something to compare (CIF's ternary rule and TPP's totals need many elements to show a fault)
@example(("cif", {}, 0.7, torch.float64, (6, 3, 3, 3), 1.0, 1, None))
@example(("cif", {}, 0.7, torch.float32, (6, 3, 3, 3), 1.0, 2, 3))
@example(("tpp", {}, 0.7, torch.float64, (6, 3, 3, 3), 3.0, 1, None))
@example(("tpp", {"initial_potential": 0.5}, 0.4, torch.float32, (6, 3, 3, 3), 1.0, 2, None))
@seed(20250108)
@settings(max_examples=120, **SETTINGS)
@given(neuron_calls())
def test_every_neuron_returns_a_correct_result_or_refuses(call):
    name, options, threshold, dtype, shape, scale, seed, wake = call
    x = _window(shape, dtype, scale, seed)
    options_ok = all(_option_ok(name, k, v) for k, v in options.items())
    hard_invalid = (
        not options_ok
        or not _threshold_ok(threshold)
        or not dtype.is_floating_point
        or shape[0] == 0
        or (wake is not None and wake < 1)
        or not bool(torch.isfinite(x).all())
    )
    try:
        neuron = create_neuron(name, threshold, **options)
        out = neuron(x, wake_steps=wake, generator=torch.Generator().manual_seed(seed))
    except SnnconvError as err:
        message = _clear(err)
        event("refused: " + ("invalid input" if hard_invalid else "out of the dtype's range"))
        if not hard_invalid:
            units = options.get("group_size", 4) if name == "gn" else 1
            assert not _comfortable(x, float(threshold), units), f"valid input refused: {message}"
            assert "does not fit" in message or "overflow" in message, message
        return
    assert not hard_invalid, f"invalid input accepted: {call}"
    event(f"accepted {dtype}")
    # a correct result
    assert out.shape == x.shape and out.dtype == x.dtype
    assert bool(torch.isfinite(out).all()), "non-finite output from finite input"
    assert name in EXPECTED_RANGE, f"neuron {name!r} has no range from the spec in EXPECTED_RANGE: add it"
    low, high = EXPECTED_RANGE[name](options)
    assert neuron.spike_range == (low, high)
    step = neuron.threshold.double() / neuron.units  # one spike unit, as stored (float64 or cast)
    units = out.double() / step
    whole = units.round()
    eps = torch.finfo(dtype).eps
    assert bool(((units - whole).abs() <= 4 * eps * whole.abs().clamp(min=1)).all()), "output off the spike lattice"
    assert bool((whole >= low).all() and (whole <= high).all()), (whole.min(), whole.max(), low, high)
    assert torch.equal(neuron.spike_units(out), whole.abs().to(neuron.spike_units(out).dtype))
    _check_against_reference(name, options, neuron, x, whole, wake)
    # the same call again gives the same spikes (stochastic neurons: same generator seed)
    again = neuron(x, wake_steps=wake, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(out, again)
    if neuron.causal and shape[0] > 1 and not neuron.sleeps:
        assert torch.equal(neuron(x[:-1]), out[:-1])  # the first T-1 steps do not see step T
    if name == "cif":
        running = whole.cumsum(0)
        cap = torch.arange(1, shape[0] + 1).clamp(max=wake or shape[0]).reshape(-1, *[1] * (x.dim() - 1))
        assert bool((running >= 0).all()), "more negative than positive spikes"
        if options.get("spike_cap", True):
            assert bool((running <= cap).all()), "more spikes than wake steps"


def _check_against_reference(name, options, neuron, x, whole, wake) -> None:
    """The spike units ``whole`` are the ones the spec's rule gives (tests/neuron_reference.py,
    step by step in float64, option defaults from the spec): IF/GN/CIF spike for spike
    wherever no potential came within float error of a boundary, TPP's totals within
    floor/ceil of the integrated input."""
    work = compute_dtype(x.dtype)
    theta = neuron.threshold.to(work).double()  # the theta the dynamics run with
    xs = x.to(work).double()
    largest = float(xs.abs().max())
    # the float error of the library's potential, in units of theta, with room to spare
    tol = 64 * torch.finfo(work).eps * x.shape[0] * (1 + largest / float(theta.min()) + options.get("group_size", 4))
    if name == "tpp":
        low, high = tpp_total_bounds(xs, theta, options.get("initial_potential", 0.0), tol)
        total = whole.sum(0)
        assert bool(((total >= low) & (total <= high)).all()), "TPP total outside floor/ceil of its input"
        return
    if name in ("if", "gn"):
        tau = options.get("group_size", 4) if name == "gn" else 1
        expected, margin = group_reference(xs, theta, tau, options.get("initial_potential", 0.5))
    else:
        assert name == "cif", f"neuron {name!r} has no reference rule in this test: add one"
        expected, margin = cif_reference(xs, theta, wake, options.get("negative_spikes", True), options.get("spike_cap", True))
    clear = margin > tol
    event("reference: every element compared" if bool(clear.all()) else "reference: boundary elements skipped")
    assert torch.equal(whole[:, clear], expected[:, clear]), "spikes differ from the spec's step-by-step rule"


# ---- simulate() ------------------------------------------------------------------------

_NETWORKS: dict = {}


def _network(neuron: str):
    """A small conv + linear QCFS network (cheap enough for many examples), converted."""
    if neuron not in _NETWORKS:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), QCFS(4, threshold=1.0), nn.Flatten(),
            nn.Linear(64, 16), QCFS(4, threshold=1.0), nn.Linear(16, 10),
        ).eval()
        x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2
        _NETWORKS[neuron] = (convert(model, neuron), x, {})
    return _NETWORKS[neuron]


JUNK = st.sampled_from([0, -2, 2.5, "3", None, True, 10**9])


@st.composite
def simulate_calls(draw):
    neuron = draw(st.sampled_from(["if", "gn", "tpp", "cif"]))
    steps = mostly(draw, st.one_of(st.integers(1, 5), st.just(np.int64(3))), JUNK, 1)
    sleep = mostly(draw, st.integers(0, 4) if neuron == "cif" else st.just(0), st.one_of(JUNK, st.integers(1, 3)), 1)
    permute = mostly(draw, st.sampled_from([None, None, "per-neuron", "per-layer"]), st.sampled_from(["x", ""]), 1)
    budget_kind = mostly(draw, st.sampled_from(["default", "one", "two"]), st.sampled_from(["below", "zero", "float", "text"]), 1)
    sim_seed = mostly(draw, st.one_of(st.integers(0, 2**40), st.just(np.int64(4))), st.sampled_from([-1, 2**70, 2.5, "x", None]), 1)
    dtype = mostly(draw, st.sampled_from([torch.float32, torch.float16, torch.float64]), st.just(torch.int64), 1)
    return neuron, steps, sleep, permute, budget_kind, sim_seed, dtype


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@example(("if", 3, 0, None, "default", "x", torch.float32))  # ValueError from int("x")
@example(("tpp", 2, 0, None, "default", 2**70, torch.float32))  # overflow in manual_seed
@example(("if", 2, 0, None, "default", 2.5, torch.float32))  # seed silently truncated
@example(("if", 10**9, 0, None, "default", 0, torch.float32))  # would allocate terabytes
@example(("cif", 2, 10**9, None, "default", 0, torch.float32))
@example(("if", 2, 0, "per-neuron", "below", 0, torch.float32))
@seed(20250108)
@settings(max_examples=60, **SETTINGS)
@given(simulate_calls())
def test_simulate_returns_a_correct_result_or_refuses(call):
    neuron, steps, sleep, permute, budget_kind, seed, dtype = call
    snn, x, references = _network(neuron)
    total = int(steps) + int(sleep) if _is_int(steps) and _is_int(sleep) and int(steps) < 100 else None
    per_sample = bytes_per_sample(snn, x, total, permute or None) if total and total > 0 else None
    budgets = {"default": 2 << 30, "zero": 0, "float": 1e9, "text": "1GB"}
    if per_sample:
        budgets.update(one=per_sample, two=2 * per_sample, below=per_sample - 1)
    budget = budgets.get(budget_kind, 1)
    valid = (
        _is_int(steps) and 1 <= steps < 100
        and _is_int(sleep) and 0 <= sleep < 100 and (sleep == 0 or neuron == "cif")
        and permute in (None, "per-neuron", "per-layer") and not (permute and sleep)
        and _is_int(seed) and -(2**63) <= seed < 2**64
        and budget_kind not in ("zero", "float", "text", "below") and _is_int(budget)
        and dtype.is_floating_point
    )
    try:
        out = simulate(snn, x.to(dtype), steps, sleep_steps=sleep, permute=permute, seed=seed, memory_budget=budget)
    except SnnconvError as err:
        _clear(err)
        event("refused")
        assert not valid, f"valid call refused: {err}"
        return
    assert valid, f"invalid call accepted: {call}"
    event("accepted" + (", chunked" if budget_kind in ("one", "two") else ""))
    assert out.shape == (steps + sleep, 3, 10) and bool(torch.isfinite(out).all())
    if not snn.stochastic and permute is None:
        # whatever the chunking and input dtype (cast to the network's), the same outputs
        key = (int(steps), int(sleep), dtype)
        reference = references.setdefault(key, simulate(snn, x.to(dtype), int(steps), sleep_steps=int(sleep)))
        assert torch.equal(out, reference)
    else:
        assert torch.equal(out, simulate(snn, x.to(dtype), steps, sleep_steps=sleep, permute=permute, seed=seed,
                                         memory_budget=budget))


@pytest.mark.parametrize("steps", [0, -3, 2.5, "4", True])
def test_simulate_refuses_bad_steps_with_a_clear_message(steps):
    snn, x, _ = _network("if")
    with pytest.raises(SnnconvError, match=r"T"):
        simulate(snn, x, steps)

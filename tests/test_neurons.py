"""Exact properties of every neuron (../shared/methods.md sections 2-5) and registry-wide checks."""
from __future__ import annotations

import pytest
import torch

from snnconv import QCFS, ClipFloor, SnnconvError, create_neuron, list_neurons
from snnconv.functional import cif_window, tpp_window
from snnconv.functional.params import CIFParams, TPPParams
from snnconv.neurons import SourceInfo, neuron_options

ALL = list_neurons()


def reference_if(x: torch.Tensor, theta: float, phi: float) -> torch.Tensor:
    """Spec section 2, written step by step with no shared code."""
    v = torch.full_like(x[0], phi * theta)
    out = []
    for t in range(x.shape[0]):
        v = v + x[t]
        s = (v >= theta).to(x.dtype)
        v = v - theta * s
        out.append(theta * s)
    return torch.stack(out)


# ---- registry-wide -------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_window_shape_dtype_and_determinism(name, dtype):
    neuron = create_neuron(name, 0.7)
    x = torch.randn(6, 3, 4, 5, dtype=dtype)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out1, out2 = neuron(x, generator=g1), neuron(x, generator=g2)
    assert out1.shape == x.shape and out1.dtype == dtype
    assert torch.equal(out1, out2)
    assert torch.isfinite(out1).all()
    # outputs are whole spike units times theta: out / (theta / units) computed here, in
    # float64, unrounded (spike_units() rounds, so it cannot show an off-lattice output)
    raw = out1.double() / (neuron.threshold.double() / neuron.units)
    assert (raw - raw.round()).abs().max() < 1e-4
    assert torch.equal(neuron.spike_units(out1).double(), raw.round().abs())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("threshold", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_threshold_is_refused(name, threshold):
    with pytest.raises(SnnconvError, match="threshold"):
        create_neuron(name, threshold)


@pytest.mark.parametrize("name", ALL)
def test_bad_windows_are_refused(name):
    neuron = create_neuron(name, 1.0)
    with pytest.raises(SnnconvError, match="NaN"):
        neuron(torch.tensor([[float("nan")]]))
    with pytest.raises(SnnconvError, match="floating"):
        neuron(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(SnnconvError, match="shape"):
        neuron(torch.ones(3))
    with pytest.raises(SnnconvError, match="T = 0"):
        neuron(torch.ones(0, 3))


def test_unknown_neuron_and_option():
    with pytest.raises(SnnconvError, match="unknown neuron 'lif'.*if"):
        create_neuron("lif")
    with pytest.raises(SnnconvError, match="no option tau"):
        create_neuron("if", 1.0, tau=3)
    assert "group_size" in neuron_options("gn")


@pytest.mark.parametrize("name", ["if", "gn", "cif"])
def test_causal_neurons_are_prefix_consistent(name):
    """The output over T steps is the prefix of the output over 2T steps (one run gives all T)."""
    neuron = create_neuron(name, 1.0)
    assert neuron.causal
    x = torch.rand(16, 4, 7, dtype=torch.float64) * 1.5 - 0.2
    assert torch.equal(neuron(x[:8]), neuron(x)[:8])


# ---- IF (section 2) ------------------------------------------------------------------

@pytest.mark.parametrize("phi", [0.0, 0.5])
def test_if_constant_input_count(phi):
    theta, steps = 1.3, 16
    z = torch.rand(5000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * theta
    exact = steps * z / theta + phi
    z = z[(exact - exact.round()).abs() > 1e-9]  # a level boundary is decided by float rounding
    out = create_neuron("if", theta, initial_potential=phi)(z.expand(steps, -1).unsqueeze(1).contiguous())
    count = (out / theta).sum(0).squeeze(0).round()
    expected = torch.clamp(torch.floor(steps * z / theta + phi), 0, steps)
    assert torch.equal(count, expected)


def test_if_matches_reference_loop():
    x = torch.randn(20, 5, 9, dtype=torch.float64)
    out = create_neuron("if", 0.8, initial_potential=0.5)(x)
    assert torch.allclose(out, reference_if(x, 0.8, 0.5), atol=1e-12)


def test_if_equals_qcfs_for_one_layer_at_T_equal_L():
    levels = 8
    act = QCFS(levels, threshold=2.0).double()
    z = torch.rand(3000, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3 - 0.5
    exact = z * levels / 2.0 + 0.5
    z = z[(exact - exact.round()).abs() > 1e-9]
    neuron = create_neuron("if", 2.0, source=SourceInfo(levels, 0.5))
    out = neuron(z.expand(levels, -1).unsqueeze(1).contiguous()).mean(0).squeeze(0)
    assert torch.allclose(out, act(z).detach(), atol=1e-12)


# ---- GN (section 3) ------------------------------------------------------------------

def test_gn_group_of_one_is_if_bit_for_bit():
    x = torch.randn(12, 4, 33)
    assert torch.equal(create_neuron("gn", 0.9, group_size=1, initial_potential=0.5)(x), create_neuron("if", 0.9, initial_potential=0.5)(x))


@pytest.mark.parametrize("levels", [2, 4, 8, 16])
def test_gn_one_step_equals_qcfs_exactly(levels):
    torch.manual_seed(levels)
    act = QCFS(levels, threshold=1.7)
    z = torch.cat([torch.randn(5000) * 2, torch.tensor([-3.0, 0.0, 1.7, 5.0])])  # negative and above-lambda included
    neuron = create_neuron("gn", act.threshold.detach(), group_size=levels, source=SourceInfo(levels, 0.5))
    assert torch.equal(neuron(z.reshape(1, 1, -1))[0, 0], act(z).detach())


@pytest.mark.parametrize("steps,tau", [(2, 4), (4, 2), (3, 3)])
def test_gn_constant_input_resolves_T_times_tau_levels(steps, tau):
    theta = 1.0
    z = torch.rand(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(steps)) * theta
    exact = z * steps * tau / theta + 0.5
    z = z[(exact - exact.round()).abs() > 1e-9]
    out = create_neuron("gn", theta, group_size=tau, initial_potential=0.5)(z.expand(steps, -1).unsqueeze(1).contiguous())
    rate = out.mean(0).squeeze(0)
    levels = steps * tau
    expected = torch.clamp(torch.floor(z * levels / theta + 0.5), 0, levels) * theta / levels
    assert torch.allclose(rate, expected, atol=1e-12)
    assert len(torch.unique(rate)) == levels + 1


def test_gn_counts_n_spike_events():
    neuron = create_neuron("gn", 1.0, group_size=4)
    out = neuron(torch.full((1, 1, 1), 0.76))
    assert float(neuron.spike_units(out).sum()) == 3.0


def test_gn_auto_group_size():
    neuron = create_neuron("gn", 1.0, group_size="auto", target_steps=2, source=SourceInfo(8, 0.5))
    assert neuron.params.group_size == 4
    with pytest.raises(SnnconvError, match="target_steps"):
        create_neuron("gn", 1.0, group_size="auto", source=SourceInfo(8, 0.5))


# ---- TPP (section 4) -----------------------------------------------------------------

def test_tpp_emits_exactly_m_spikes():
    steps, theta = 8, 0.5
    m = torch.arange(0, steps + 1, dtype=torch.float64).repeat(200)  # every m, many neurons
    x = torch.zeros(steps, 1, m.numel(), dtype=torch.float64)
    x[0, 0] = m * theta  # all input in one step: TPP only sees the sum
    out = tpp_window(x, torch.tensor(theta, dtype=torch.float64), TPPParams(0.0), torch.Generator().manual_seed(0))
    assert torch.equal((out / theta).sum(0)[0], m)


@pytest.mark.parametrize("steps", [1, 3, 7, 12, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tpp_exact_counts_survive_rounding_at_every_T(steps, dtype):
    """p = 1 must always fire and p = 0 never, whatever T: the level owed * 2^16 / n
    is rounded, and a draw at the very top of the 16-bit range must still fire."""
    m = torch.arange(0, steps + 1, dtype=dtype).repeat(3000)
    theta = 0.3
    x = (m * theta).reshape(1, 1, -1).expand(steps, 1, -1) / steps
    out = tpp_window(x.contiguous(), torch.tensor(theta, dtype=dtype), TPPParams(0.0), torch.Generator().manual_seed(steps))
    assert torch.equal((out / theta).round().sum(0)[0], m)


def test_uniform_levels_are_uniform_and_ignore_the_thread_count():
    from snnconv.functional.tpp import uniform_levels

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = uniform_levels((7, 100_003), torch.Generator().manual_seed(5))
        torch.set_num_threads(2)
        two = uniform_levels((7, 100_003), torch.Generator().manual_seed(5))
    finally:
        torch.set_num_threads(threads)
    assert one.dtype == torch.int16 and one.shape == (7, 100_003)
    assert torch.equal(one, two)  # blocks are seeded by position, not by thread
    values = one.flatten().long() + 32768  # 0 .. 2^16 - 1
    # every 16-bit lane of the 64-bit words is uniform, the top one (sign bit) included
    lanes = values[: values.numel() // 4 * 4].reshape(-1, 4).double()
    assert ((lanes.mean(0) - 32767.5).abs() < 200).all()
    assert ((lanes >= 32768).double().mean(0) - 0.5).abs().max() < 0.005
    counts = torch.bincount(values // 4096, minlength=16).double()  # 16 equal bins
    expected = values.numel() / 16
    assert float(((counts - expected) ** 2 / expected).sum()) < 37.7  # chi-square, 15 dof, 99.9%


def test_tpp_extremes():
    g = torch.Generator().manual_seed(1)
    x = torch.tensor([-5.0, 0.0, 9.0, 100.0]).reshape(1, 1, 4).expand(6, 1, 4).contiguous()
    out = tpp_window(x, torch.tensor(1.0), TPPParams(0.0), g)
    counts = out.sum(0)[0]
    assert counts.tolist() == [0.0, 0.0, 6.0, 6.0]


def test_tpp_static_window_equals_its_materialised_copy():
    """The engine passes a static input as one step repeated without copies (stride 0 in
    time); TPP sums it as T x that step. Same sum, same draws: the same spikes."""
    step = torch.tensor([0.0, 0.25, 0.5, 1.5, 2.0, 3.75, -1.0]).repeat(500).reshape(1, -1)  # dyadic: exact sums
    static = step.expand(4, *step.shape)
    theta = torch.tensor(0.5)
    a = tpp_window(static, theta, TPPParams(0.0), torch.Generator().manual_seed(6))
    b = tpp_window(static.contiguous(), theta, TPPParams(0.0), torch.Generator().manual_seed(6))
    assert static.stride(0) == 0 and torch.equal(a, b)
    assert torch.equal((a / theta).sum(0), (4 * step / theta).clamp(0, 4))  # integer owed: exact counts


def test_tpp_placement_is_uniform():
    """m spikes land in each of the T slots with probability m / T (chi-square bound).

    A rule that fires as early as possible (IF-like) puts all mass in the first m slots
    and fails this by orders of magnitude.
    """
    steps, m, n = 8, 3, 40000
    x = torch.zeros(steps, 1, n)
    x[0] = m
    out = tpp_window(x, torch.tensor(1.0), TPPParams(0.0), torch.Generator().manual_seed(2))
    per_slot = out.sum((1, 2))
    expected = n * m / steps
    chi2 = float(((per_slot - expected) ** 2 / expected).sum())
    assert chi2 < 24.3  # 99.9% quantile of chi-square with 7 degrees of freedom
    pairs = (out[0, 0] * out[1, 0]).mean()  # P(slot 1 and slot 2) = m(m-1)/(T(T-1))
    assert abs(float(pairs) - m * (m - 1) / (steps * (steps - 1))) < 0.01


def test_tpp_ignores_input_order():
    x = torch.randn(10, 3, 50)
    perm = torch.randperm(10)
    a = tpp_window(x, torch.tensor(0.7), TPPParams(0.5), torch.Generator().manual_seed(3))
    b = tpp_window(x[perm], torch.tensor(0.7), TPPParams(0.5), torch.Generator().manual_seed(3))
    # Same sum (up to float rounding of the order), same draws: the same spikes.
    assert torch.equal(a, b)


def test_tpp_expected_count_tracks_clip():
    """Integer u/theta: exact. Fractional: the sequential rule rounds a fraction f up with
    a probability that is not exactly f: |bias| reached 0.31 spikes at T = 8 (measured
    here); the stated tolerance is 0.35."""
    steps, n = 8, 20000
    u = torch.linspace(-1, 10, 23)
    x = torch.zeros(steps, 1, 23 * n)
    x[0, 0] = u.repeat_interleave(n)
    counts = tpp_window(x, torch.tensor(1.0), TPPParams(0.0), torch.Generator().manual_seed(4)).sum(0)[0].reshape(23, n)
    expected = u.clamp(0, steps)
    bias = counts.mean(1) - expected
    assert (bias.abs() < 0.35).all()
    integer = u == u.round()
    assert torch.equal(counts[integer].mean(1), expected[integer])


def test_tpp_same_seed_same_spikes_and_other_seed_differs():
    neuron = create_neuron("tpp", 1.0)
    x = torch.rand(8, 4, 100)
    a = neuron(x, generator=torch.Generator().manual_seed(0))
    b = neuron(x, generator=torch.Generator().manual_seed(0))
    c = neuron(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- CIF (section 5) -----------------------------------------------------------------

def test_cif_never_more_spikes_than_wake_steps():
    x = torch.full((10, 1, 3), 5.0)  # strong input: would fire every step and more
    out = cif_window(x, torch.tensor(1.0), CIFParams(), wake_steps=4)
    running = out.cumsum(0)[:, 0]
    wake = torch.arange(1, 11).clamp(max=4).unsqueeze(1)
    assert (running <= wake).all() and running[-1].eq(4).all()


def test_cif_negative_spike_only_after_positive():
    x = torch.tensor([-1.0, 2.0, -2.0, -2.0, 0.0]).reshape(5, 1, 1)
    out = cif_window(x, torch.tensor(1.0), CIFParams())[:, 0, 0]
    assert out.tolist() == [0.0, 1.0, -1.0, 0.0, 0.0]
    assert (out.cumsum(0) >= 0).all()


def test_cif_ternary_and_starts_at_zero():
    x = torch.randn(30, 2, 40)
    out = cif_window(x, torch.tensor(0.5), CIFParams(), wake_steps=10)
    assert set(torch.unique(out / 0.5).tolist()) <= {-1.0, 0.0, 1.0}
    # v(0) = 0: an input just below theta at step 1 does not fire
    assert float(cif_window(torch.full((1, 1, 1), 0.499), torch.tensor(0.5))[0, 0, 0]) == 0.0


def test_cif_ends_at_clipped_floor_of_input_sum():
    steps, sleep = 8, 8
    x = torch.randn(steps, 1, 500, dtype=torch.float64) * 0.6 + 0.3
    window = torch.cat([x, torch.zeros(sleep, 1, 500, dtype=torch.float64)])
    out = cif_window(window, torch.tensor(1.0, dtype=torch.float64), CIFParams(), wake_steps=steps)
    expected = torch.clamp(torch.floor(x.sum(0)), 0, steps)
    assert torch.equal(out.sum(0), expected)


def test_clipfloor_activation_levels():
    act = ClipFloor(4, threshold=1.0)
    z = torch.tensor([-1.0, 0.1, 0.26, 0.99, 1.0, 3.0])
    assert act(z).tolist() == [0.0, 0.0, 0.25, 0.75, 1.0, 1.0]

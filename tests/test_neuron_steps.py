"""The neuron layout of issue 17: step functions over typed state records, one time loop,
one context record, one file per neuron; checked against the spec's step-by-step rules."""
from __future__ import annotations

import copy
import doctest

import pytest
import torch

import snnconv.functional
import snnconv.neurons
from snnconv import SnnconvError, convert, create_neuron
from snnconv.functional import (
    CIFParams,
    CIFState,
    GroupParams,
    GroupState,
    TPPParams,
    WindowContext,
    cif_step,
    cif_window,
    group_step,
    group_window,
    run_steps,
    tpp_window,
)
from snnconv.neurons import CIFNeuron, GroupNeuron, IFNeuron, SpikingNeuron, TPPNeuron

from helpers import make_source
from neuron_reference import cif_reference, group_reference, tpp_total_bounds

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _window(dtype, constant=False, steps=8, seed=0) -> torch.Tensor:
    """[T, 4, 250] inputs around theta = 0.7 (constant: one step repeated, stride 0)."""
    g = torch.Generator().manual_seed(seed)
    if constant:
        return (torch.rand(4, 250, generator=g, dtype=torch.float64) * 0.9).to(dtype).expand(steps, 4, 250)
    return (torch.randn(steps, 4, 250, generator=g, dtype=torch.float64) * 0.6 + 0.25).to(dtype)


def _compared(name, spikes, expected, margin, dtype, steps):
    """Spike units equal the reference wherever no potential came within float error of a boundary."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    clear = margin > 64 * torch.finfo(work).eps * steps * 8
    assert clear.float().mean() > 0.95, f"{name}: too many boundary cases to compare"
    assert expected.abs().sum() > 100, f"{name}: the reference emits (almost) no spikes; a weak test"
    assert torch.equal(spikes[:, clear], expected[:, clear]), f"{name} differs from the spec's step-by-step rule"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("constant", [False, True])
@pytest.mark.parametrize("name,tau,phi", [("if", 1, 0.5), ("if", 1, 0.0), ("gn", 3, 0.5), ("gn", 4, 0.2)])
def test_if_and_gn_match_the_spec_step_by_step(name, tau, phi, dtype, inplace, constant):
    x = _window(dtype, constant)
    options = {"group_size": tau} if name == "gn" else {}
    neuron = create_neuron(name, 0.7, initial_potential=phi, **options)
    theta = neuron.threshold.to(torch.float64 if dtype == torch.float64 else torch.float32).double()
    expected, margin = group_reference(x.double(), theta, tau, phi)
    out = neuron(x.clone() if inplace and not constant else x, inplace=inplace)
    assert out.dtype == dtype
    _compared(name, neuron.spike_units(out), expected, margin, dtype, x.shape[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("wake,sleep", [(None, 0), (4, 6), (8, 8)])
@pytest.mark.parametrize("negative_spikes,spike_cap", [(True, True), (False, True), (True, False)])
def test_cif_matches_the_spec_step_by_step(negative_spikes, spike_cap, wake, sleep, dtype, inplace):
    x = _window(dtype, steps=(wake or 8) + sleep, seed=1)
    if sleep:
        x[wake:] = 0.0  # sleep: zero input (the engine's job)
    neuron = create_neuron("cif", 0.7, negative_spikes=negative_spikes, spike_cap=spike_cap)
    theta = neuron.threshold.to(torch.float64 if dtype == torch.float64 else torch.float32).double()
    expected, margin = cif_reference(x.double(), theta, wake, negative_spikes, spike_cap)
    out = neuron(x.clone() if inplace else x, wake_steps=wake, inplace=inplace)
    signed = torch.sign(out.double()) * neuron.spike_units(out).double()
    _compared("cif", signed, expected, margin, dtype, x.shape[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("phi", [0.0, 0.5])
def test_tpp_totals_are_floor_or_ceil_of_the_integrated_input(phi, dtype):
    x = _window(dtype, seed=2) * 2
    neuron = create_neuron("tpp", 0.7, initial_potential=phi)
    out = neuron(x, generator=torch.Generator().manual_seed(0))
    theta = neuron.threshold.to(torch.float64 if dtype == torch.float64 else torch.float32).double()
    low, high = tpp_total_bounds(x.double(), theta, phi, 1e-4)
    total = neuron.spike_units(out).double().sum(0)
    assert ((total >= low) & (total <= high)).all()
    assert (high > low).sum() > 500  # fractional inputs: the bounds are not trivially tight


def test_step_functions_run_by_hand_equal_the_window():
    """The step functions are usable on their own: one explicit loop reproduces the window."""
    x = torch.randn(7, 3, 20, dtype=torch.float64)
    theta = torch.tensor(0.8, dtype=torch.float64)
    state = GroupState(torch.full_like(x[0], 0.5))
    counts = []
    for t in range(x.shape[0]):
        n = torch.empty_like(x[0])
        state = group_step(x[t] * (3 / theta), state, n, group_size=3)
        counts.append(n * (theta / 3))
    assert torch.equal(torch.stack(counts), group_window(x, theta, GroupParams(3, 0.5)))

    state = CIFState.zeros_like(x[0])
    spikes = []
    for t in range(x.shape[0]):
        s = torch.empty_like(x[0])
        state = cif_step(x[t] / theta, state, s, params=CIFParams(), wake_steps=4)
        spikes.append(s * theta)
    assert state.steps == x.shape[0]
    assert torch.equal(torch.stack(spikes), cif_window(x, theta, CIFParams(), 4))


def test_run_steps_folds_the_step_over_time_in_order():
    seen = []

    def step(drive, state, out):
        seen.append(float(drive[0]))
        out.copy_(drive + state)
        return state + 1

    drive = torch.arange(5.0).reshape(5, 1)
    out = torch.empty_like(drive)
    assert run_steps(step, drive, 10, out) == 15
    assert seen == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert out.flatten().tolist() == [10.0, 12.0, 14.0, 16.0, 18.0]


@pytest.mark.parametrize("name", ["if", "gn", "cif", "tpp"])
def test_inplace_reuses_the_window_and_gives_the_same_values(name):
    x = torch.randn(6, 2, 50)
    neuron = create_neuron(name, 0.6)
    fresh = neuron(x, generator=torch.Generator().manual_seed(1))
    buffer = x.clone()
    reused = neuron(buffer, generator=torch.Generator().manual_seed(1), inplace=True)
    assert reused.data_ptr() == buffer.data_ptr()  # no window-sized allocation
    assert torch.equal(reused, fresh)
    kept = x.clone()
    neuron(kept, generator=torch.Generator().manual_seed(1))
    assert torch.equal(kept, x)  # without inplace the input is untouched


def test_window_functions_take_the_same_window_static_or_materialised():
    step = torch.randn(3, 40, dtype=torch.float64)
    static = step.expand(5, 3, 40)
    theta = torch.tensor(0.9, dtype=torch.float64)
    assert torch.equal(group_window(static, theta, GroupParams(2, 0.5), inplace=True),
                       group_window(static.contiguous(), theta, GroupParams(2, 0.5)))
    assert torch.equal(cif_window(static, theta, CIFParams(), 3, inplace=True),
                       cif_window(static.contiguous(), theta, CIFParams(), 3))
    assert static.stride(0) == 0  # never written into


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_context_record_refuses_bad_wake_steps(bad):
    with pytest.raises(SnnconvError, match=r"^wake_steps must be None or an integer >= 1, got "):
        WindowContext(wake_steps=bad)
    with pytest.raises(SnnconvError, match=r"^wake_steps must be None or an integer >= 1, got "):
        create_neuron("cif", 1.0)(torch.ones(2, 1), wake_steps=bad)


def test_dynamics_receive_one_context_record():
    seen = []

    class Recording(GroupNeuron):
        def dynamics(self, x, threshold, context):
            seen.append(context)
            return super().dynamics(x, threshold, context)

    neuron = Recording(1.0)
    g = torch.Generator()
    neuron(torch.ones(3, 2), wake_steps=2, generator=g, inplace=True)
    neuron(torch.ones(3, 2, dtype=torch.float16))  # a half window is copied: the copy is ours
    assert seen == [WindowContext(2, g, True), WindowContext(None, None, True)]
    seen.clear()

    class CannotReuse(SpikingNeuron):  # supports_inplace stays False
        def dynamics(self, x, threshold, context):
            seen.append(context)
            return x.clone()

    CannotReuse(1.0)(torch.ones(3, 2), inplace=True)
    assert seen == [WindowContext(None, None, False)]  # a neuron that cannot reuse the window is not told to


def test_each_neuron_prints_under_its_own_name():
    assert repr(create_neuron("if", 2.0)) == "IFNeuron(θ=2, v0=θ/2)"
    assert repr(create_neuron("if", 2.0, initial_potential=0.0)) == "IFNeuron(θ=2, v0=0)"
    assert repr(create_neuron("gn", 1.5, group_size=4)) == "GroupNeuron(θ=1.5, τ=4, v0=θ/(2τ))"
    assert repr(create_neuron("gn", 1.5, group_size=4, initial_potential=0.3)) == "GroupNeuron(θ=1.5, τ=4, v0=0.3·θ/τ)"
    assert repr(create_neuron("tpp", 1.0)) == "TPPNeuron(θ=1, v0=0)"
    assert repr(create_neuron("cif", 1.0)) == "CIFNeuron(θ=1)"
    assert repr(create_neuron("cif", 1.0, spike_cap=False)) == "CIFNeuron(θ=1, spike_cap=False)"
    per_channel = create_neuron("if", torch.full((16, 1, 1), 0.5))
    assert repr(per_channel) == "IFNeuron(θ per channel (16), v0=θ/2)"
    per_channel.set_potential_offset(torch.zeros(16, 1, 1))
    assert repr(per_channel) == "IFNeuron(θ per channel (16), v0=θ/2 + offset)"
    # the IF neuron is still a group of one for code that asks
    assert isinstance(create_neuron("if"), GroupNeuron) and create_neuron("if").params.group_size == 1
    model, x = make_source("small_cnn", "qcfs", dtype=torch.float32)
    printed = repr(convert(model, "if"))
    assert "IFNeuron(θ=" in printed and "GroupNeuron" not in printed and "group_size" not in printed


def test_each_neuron_lives_in_its_own_file_with_its_registration():
    from snnconv.neurons.registry import _NEURONS

    where = {name: _NEURONS.get(name).__module__ for name in _NEURONS.names()}
    assert where == {"if": "snnconv.neurons.if_", "gn": "snnconv.neurons.group", "tpp": "snnconv.neurons.tpp",
                     "cif": "snnconv.neurons.cif"}
    assert IFNeuron.__module__ == "snnconv.neurons.if_" and GroupNeuron.__module__ == "snnconv.neurons.group"
    assert TPPNeuron.__module__ == "snnconv.neurons.tpp" and CIFNeuron.__module__ == "snnconv.neurons.cif"


def test_every_name_of_the_old_neurons_module_still_imports():
    from snnconv.neurons import (  # noqa: F401
        _NEURONS,
        DEFAULT_INITIAL_POTENTIAL,
        CIFNeuron,
        CIFParams,
        GroupNeuron,
        GroupParams,
        NeuronFactory,
        SnnconvError,
        SourceInfo,
        SpikingNeuron,
        TPPNeuron,
        TPPParams,
        _cif,
        _gn,
        _if,
        _lookup,
        _phi,
        _tpp,
        check_scale,
        check_threshold,
        check_window,
        cif_window,
        compute_dtype,
        create_neuron,
        group_window,
        list_neurons,
        neuron_options,
        register_neuron,
        tpp_window,
    )


@pytest.mark.parametrize("module", [snnconv.neurons, snnconv.functional])
def test_docstring_examples_run(module, monkeypatch):
    """The examples in the docstrings run as written (the neurons one registers a neuron:
    on a copy of the registry, so other tests do not see it)."""
    from snnconv.neurons import registry

    monkeypatch.setattr(registry, "_NEURONS", copy.deepcopy(registry._NEURONS))
    result = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert result.failed == 0
    assert module is snnconv.functional or result.attempted >= 6


def test_public_functions_document_what_they_raise():
    import inspect

    import snnconv.functional.loop
    import snnconv.functional.params
    import snnconv.functional.tpp
    import snnconv.neurons.registry

    modules = [snnconv.functional, snnconv.functional.loop, snnconv.functional.params, snnconv.functional.tpp,
               snnconv.neurons, snnconv.neurons.registry]
    missing = []
    for module in modules:
        for name, obj in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not obj.__module__.startswith(("snnconv.functional", "snnconv.neurons")):
                continue
            if inspect.isclass(obj) and issubclass(obj, tuple):
                continue  # state records: plain data
            if "Raises:" not in (obj.__doc__ or ""):
                missing.append(f"{obj.__module__}.{name}")
    assert not missing, missing


def test_params_refuse_bad_values_in_one_line():
    with pytest.raises(SnnconvError, match=r"^group_size must be an integer in \[1, 16777216\], got 0$"):
        GroupParams(0)
    with pytest.raises(SnnconvError, match=r"^initial_potential must be in \[0, 1\]"):
        TPPParams(1.5)
    with pytest.raises(SnnconvError, match=r"^spike_cap must be true or false, got 'no'$"):
        CIFParams(spike_cap="no")

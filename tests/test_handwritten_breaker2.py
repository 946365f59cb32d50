"""Hand-written models that once converted to a silently wrong SNN (second round): each is
now refused in one line naming the user's module and the fix, or converts exactly
(checked against the ANN)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import assert_exact, gn_at_t1, ready_for_exactness
from snnconv import QCFS, SnnconvError, convert


def _x(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


class _Stateful(nn.Module):
    """conv -> act -> ``self.step(self, h)`` -> conv -> act -> linear; ``step`` may read or
    update the model's state (its weights, buffers, Python attributes) as it goes."""

    def __init__(self, act, step) -> None:
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 4, 3, padding=1), act(4)
        self.c2, self.a2 = nn.Conv2d(4, 4, 3, padding=1), act(4)
        self.fc = nn.Linear(4 * 8 * 8, 3)
        self.register_buffer("gain", torch.tensor(1.0))
        self.register_buffer("steps", torch.tensor(0.0))
        self.step = step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.step(self, self.a1(self.c1(x)))
        return self.fc(self.a2(self.c2(h)).flatten(1))


def _normalise_weight(model, h):  # weight normalisation written in place, as some SNN code does
    w = model.c2.weight
    w.data.div_(w.data.norm())
    return h


def _halve_weight(model, h):
    with torch.no_grad():
        model.c2.weight.mul_(0.5)
    return h


def _halve_weight_augmented(model, h):
    w = model.c2.weight.data
    w *= 0.5
    return h


def _assert_refused(step, pattern: str) -> None:
    """GN conversion of ``_Stateful(QCFS, step)`` is refused in one line matching ``pattern``."""
    x = _x()
    torch.manual_seed(0)
    model = ready_for_exactness(_Stateful(QCFS, step), x)
    with pytest.raises(SnnconvError, match=pattern) as err:
        convert(model, "gn", group_size=4)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("step, spelled", [
    (_normalise_weight, r"x\.div_\(y\)"), (_halve_weight, r"x\.mul_\(y\)"), (_halve_weight_augmented, r"x \*= y"),
])
def test_an_in_place_update_of_a_weight_in_forward_is_refused(step, spelled):
    """``self.c2.weight.data.div_(norm)`` (or ``mul_``, ``*=``) in forward() changes the
    weight the next layer reads. The converter once rewrote it out of place (as it does
    ``x += y`` on activations), so the update was lost and the SNN ran on the stale
    weight: with the weight off its norm (as after an optimizer step), GN at T = 1 missed
    the ANN's next call by 0.023 on outputs of 0.062 (``div_``), 0.016 on 0.064
    (``mul_(0.5)``), silently."""
    _assert_refused(step, rf"^_Stateful: .*{spelled}.* updates 'c2\.weight' .*in place.*before convert")


def _clip_weight(model, h):  # idempotent: the same weight at every call, kept in the graph
    model.c2.weight.data.clamp_(-0.05, 0.05)
    return h


def test_an_idempotent_weight_clamp_in_forward_still_converts_exactly():
    """``weight.data.clamp_(-a, a)`` stays in the graph and runs before the layer, as in
    the ANN: the SNN equals the ANN's next call even when the weight was out of range."""
    x = _x()
    torch.manual_seed(0)
    model = ready_for_exactness(_Stateful(QCFS, _clip_weight), x)
    with torch.no_grad():
        model.c2.weight.mul_(3.0)  # out of range again, as after an optimizer step
    got = gn_at_t1(model, x)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(got, expected, atol=1e-10)


class _Glue(nn.Module):
    """conv -> act -> ``glue(h)`` -> conv -> act -> linear."""

    def __init__(self, act, glue) -> None:
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 4, 3, padding=1), act(4)
        self.c2, self.a2 = nn.Conv2d(4, 4, 3, padding=1), act(4)
        self.fc = nn.Linear(4 * 8 * 8, 3)
        self.glue = glue

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.glue(self.a1(self.c1(x)))
        return self.fc(self.a2(self.c2(h)).flatten(1))


def _halve_through_data(h):
    d = h.data
    d *= 0.5  # h is halved
    return h


def _shift_through_mT(h):
    t = h.flatten(2)
    v = t.mT
    v += 1.0  # t (and h) are shifted
    return t.reshape(h.shape)


@pytest.mark.parametrize("glue, spelled", [(_halve_through_data, r"\*="), (_shift_through_mT, r"\+=")],
                         ids=["data *=", "mT +="])
def test_an_augmented_assignment_through_an_attribute_view_is_refused(glue, spelled):
    """``d = h.data; d *= 0.5`` (or ``v = t.mT; v += 1``) updates h's memory; torch.fx hands
    out attribute reads (``.data``, ``.mT``) as a proxy class without the in-place
    operators, so ``*=`` was recorded as an unused ``d * 0.5`` and dropped: GN at T = 1
    missed the ANN by 0.0096 on outputs of 0.069 (``data *= 0.5``) and by 0.037 on 0.050
    (``mT += 1``), silently. The update is now seen, and its later read under the old name
    refused like ``h.data.mul_(0.5)``."""
    torch.manual_seed(0)
    with pytest.raises(SnnconvError, match=rf"^_Glue: 'i\w+' \(x {spelled} y\) overwrites .* in place, which .* reads under "
                                           "another name") as err:
        convert(_Glue(QCFS, glue).double(), "gn", group_size=4)
    assert "\n" not in str(err.value)


def _update_a_copy_of_data(h):
    d = h.data * 1.0  # a new tensor: h is unchanged
    d *= 0.5
    return h + d


def test_an_augmented_assignment_of_a_new_value_taken_from_an_attribute_still_converts():
    assert_exact(lambda act: _Glue(act, _update_a_copy_of_data), _x())


def _decay_gain(model, h):  # a buffer forward() changes at every call, then reads
    model.gain.mul_(0.5)
    return h * model.gain


def _count_steps(model, h):  # a step counter the output depends on
    model.steps += 1
    return h * (1.0 + 1.0 / model.steps)


def _alternate(model, h):  # Python state: every other call doubles h
    model.calls = getattr(model, "calls", 0) + 1
    return h * 2.0 if model.calls % 2 else h


def _anneal(model, h):  # Python state read as a number
    model.temperature = getattr(model, "temperature", 1.0) * 0.5
    return h * model.temperature


@pytest.mark.parametrize("step, spelled", [
    (_decay_gain, r"buffer 'gain'"), (_count_steps, r"buffer 'steps'"),
    (_alternate, r"self\.calls"), (_anneal, r"self\.temperature"),
])
def test_a_forward_that_changes_the_models_state_is_refused(step, spelled):
    """forward() that changes a buffer (``self.gain.mul_(0.5)``, ``self.steps += 1``) or a
    Python attribute (``self.calls += 1`` then a branch on it) computes another function
    at every call. Tracing ran that code once on the converter's copy and froze the result,
    silently: the SNN reproduced one call of the ANN and missed the next (GN at T = 1:
    0.0048 on outputs of 0.070 for the halved gain, 0.0037 on 0.062 for the step counter,
    0.017 on 0.062 for the alternating branch)."""
    _assert_refused(step, rf"^_Stateful\.forward\(\) changes {spelled}.*another function at every call")


def _count_only(model, h):  # a counter nothing reads: the function stays the same
    model.steps += 1
    model.calls = getattr(model, "calls", 0) + 1
    return h


def _lazy_grid(model, h):  # built on the first call, then reused: the same function every time
    if getattr(model, "grid", None) is None:
        model.grid = torch.full((1, 4, 1, 1), 0.5, dtype=h.dtype)
    return h * model.grid


@pytest.mark.parametrize("step", [_count_only, _lazy_grid])
def test_a_forward_whose_function_does_not_change_still_converts(step):
    assert_exact(lambda act: _Stateful(act, step), _x())


class _Accumulates(nn.Module):
    """A ReLU network that sums its first layer's output per channel into a buffer (a
    statistic for training code), written as ``self.seen.add_(...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(256, 3)
        self.register_buffer("seen", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        self.seen.add_(h.detach().sum((0, 2, 3)))
        return self.fc(h.flatten(1))


def test_swap_relu_keeps_an_in_place_update_of_a_buffer():
    """swap_relu() runs its graph as a PyTorch model (for training), where an update of the
    model's own buffer must stay in place; it was rewritten out of place (the buffer never
    changed), and convert()'s refusal of such updates must not reach it."""
    from snnconv.convert.relu_swap import swap_relu

    torch.manual_seed(0)
    model = _Accumulates().double()
    swapped = swap_relu(model, "qcfs", 4, 1.0)
    swapped(_x())
    assert float(swapped.seen.abs().sum()) > 0
    with pytest.raises(SnnconvError, match=r"updates 'seen' .*in place"):
        convert(model, "if", calibration=_x())


def _mix_previous(model, h):  # a temporal model written by hand: the previous call's h is mixed in
    previous = getattr(model, "previous", None)
    out = h if previous is None else h + 0.5 * previous
    model.previous = h.detach()
    return out


def _keep_features(model, h):  # features kept for inspection, never read: the same function every call
    model.features = h.detach()
    return h


def test_a_forward_that_reads_its_previous_call_is_refused_and_one_that_only_keeps_a_value_converts():
    x = _x()
    torch.manual_seed(0)
    model = ready_for_exactness(_Stateful(QCFS, _mix_previous), x)
    with pytest.raises(SnnconvError, match=r"^_Stateful\.forward\(\) changes self\.previous \(a new value at every call\)") as err:
        convert(model, "gn", group_size=4)
    assert "\n" not in str(err.value)
    assert_exact(lambda act: _Stateful(act, _keep_features), x)


class _FakeQuantisedConv(nn.Module):
    """conv -> act -> QAT conv (torch.ao.nn.qat.Conv2d: 8-bit fake-quantised weights) ->
    BatchNorm -> act -> linear, in float32 (fake quantisation needs it)."""

    def __init__(self, act) -> None:
        import torch.ao.nn.qat as qat
        from torch.ao.quantization import get_default_qat_qconfig

        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 4, 3, padding=1), act(4)
        self.c2, self.bn = qat.Conv2d(4, 4, 3, padding=1, qconfig=get_default_qat_qconfig("fbgemm")), nn.BatchNorm2d(4)
        self.a2, self.fc = act(4), nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.a2(self.bn(self.c2(self.a1(self.c1(x))))).flatten(1))


def test_a_batchnorm_after_a_fake_quantised_conv_is_kept_not_folded():
    """A QAT conv quantises its weight when it runs. Folding the BatchNorm into its stored
    weight made it quantise the folded weight instead (another rounding): GN at T = 1
    missed the ANN by 0.0020 on outputs of 0.062, CIF by 0.0015 on 0.056, silently. Such
    a conv keeps its BatchNorm as the per-channel affine after it, like a weight-normed one."""
    from helpers import cif_readout, randomize_batchnorm, spread_positive_thresholds
    from snnconv import ClipFloor

    x = _x().float()
    for act, run in ((QCFS, gn_at_t1), (ClipFloor, cif_readout)):
        torch.manual_seed(0)
        model = _FakeQuantisedConv(act)
        for _ in range(3):
            model(x)  # the observers see the weights (train mode)
        model.eval()
        randomize_batchnorm(model, torch.Generator().manual_seed(0))
        spread_positive_thresholds(model, x)
        with torch.no_grad():
            expected = model(x)
        assert torch.allclose(run(model, x), expected, atol=1e-5), act.__name__


def test_nir_export_of_fake_quantised_layers_is_refused(tmp_path):
    """NIR export wrote a QAT conv's and linear's stored weights, not the fake-quantised
    ones they compute with: the exported graph's outputs missed simulate()'s by 0.049 on
    0.24 (IF, 8 steps), silently."""
    pytest.importorskip("nir")
    import torch.ao.nn.qat as qat
    from torch.ao.quantization import get_default_qat_qconfig

    from snnconv.export.nir import export_nir

    config = get_default_qat_qconfig("fbgemm")
    torch.manual_seed(0)
    model = nn.Sequential(qat.Conv2d(3, 4, 3, padding=1, qconfig=config), QCFS(4, 0.3), nn.Flatten(),
                          qat.Linear(256, 3, qconfig=config))
    x = torch.rand(4, 3, 8, 8)
    for _ in range(3):
        model(x)  # the observers see the weights (train mode)
    snn = convert(model.eval(), "if")
    with pytest.raises(SnnconvError, match=r"layer '0' \(Conv2d subclass\) computes its weight when it runs.*plain nn\.Conv2d") as err:
        export_nir(snn, tmp_path / "net.nir", (3, 8, 8), warn=False)
    assert "\n" not in str(err.value)


class _NamedLikeSites(nn.Module):
    """Submodules the user named ``site_1``, ``activation_2``, ``dropout_4``, ``max_pool_gate_0``:
    the names the passes give the modules they add."""

    def __init__(self, act) -> None:
        super().__init__()
        self.max_pool_gate_0, self.activation_2 = nn.Conv2d(3, 4, 3, padding=1), act(4)
        self.site_1, self.dropout_4 = nn.Conv2d(4, 4, 3, padding=1), act(4)
        self.fc = nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout_4(self.site_1(self.activation_2(self.max_pool_gate_0(x)))).flatten(1))


def test_a_submodule_named_like_a_converters_module_is_not_replaced():
    """The converter added its activation sites as ``site_0``, ``site_1``, ... on the traced
    model, replacing a user's ``self.site_1 = nn.Conv2d(...)``, whose calls then ran the
    activation instead of the conv: GN at T = 1 missed the ANN by 0.036 on outputs of
    0.062, silently (``site_0`` .. ``site_2`` failed on the channel count). Added modules
    now take the next free name."""
    assert_exact(_NamedLikeSites, _x())


class _ReluNamed(nn.Module):
    """A ReLU network whose first conv is named ``first``: ``activation_2`` collides with the
    name swap_relu gives the module for the ReLU at graph node 2."""

    def __init__(self, first: str) -> None:
        super().__init__()
        self.first = first
        setattr(self, first, nn.Conv2d(3, 4, 3, padding=1))
        self.c2, self.fc = nn.Conv2d(4, 4, 3, padding=1), nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(getattr(self, self.first)(x))
        return self.fc(torch.relu(self.c2(h)).flatten(1))


def test_swap_relu_does_not_replace_a_submodule_named_like_its_activations():
    """swap_relu() added its activations as ``activation_<node index>``, replacing a user's
    ``self.activation_2 = nn.Conv2d(...)``: the swapped model ran the activation where the
    conv was."""
    from snnconv.convert.relu_swap import swap_relu

    torch.manual_seed(0)
    named = _ReluNamed("activation_2").double()
    plain = _ReluNamed("c1").double()
    plain.c1.load_state_dict(named.activation_2.state_dict())
    plain.c2.load_state_dict(named.c2.state_dict())
    plain.fc.load_state_dict(named.fc.state_dict())
    x = _x()
    got, expected = swap_relu(named, "qcfs", 4, 1.0)(x), swap_relu(plain, "qcfs", 4, 1.0)(x)
    assert torch.allclose(got, expected, atol=1e-12)


class _ReadsItsBatchNorm(nn.Module):
    """A BatchNorm after a scaled conv (kept, not folded) whose weight and running mean
    forward() also reads."""

    def __init__(self, act) -> None:
        super().__init__()
        self.c1, self.bn, self.a1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), act(4)
        self.c2, self.a2, self.fc = nn.Conv2d(4, 4, 3, padding=1), act(4), nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a1(self.bn(self.c1(x) * 1.5))
        h = h * self.bn.weight.view(1, -1, 1, 1).abs() + self.bn.running_mean.view(1, -1, 1, 1)
        return self.fc(self.a2(self.c2(h)).flatten(1))


def test_a_kept_batchnorm_whose_parameters_forward_reads_converts():
    """The kept BatchNorm was replaced at its path by its affine map, so forward()'s read of
    ``self.bn.weight`` failed with torch's RuntimeError (``Node referenced nonexistent
    target bn.weight``)."""
    assert_exact(_ReadsItsBatchNorm, _x())


def test_a_model_that_cannot_be_copied_is_refused_in_one_line():
    """A model holding a lock (or an open file, a data loader) failed inside
    copy.deepcopy with a raw TypeError (``cannot pickle '_thread.lock' object``)."""
    import threading

    from snnconv.convert.relu_swap import swap_relu

    model = _Glue(QCFS, lambda h: h)
    model.lock = threading.Lock()
    for run in (lambda: convert(model, "if"), lambda: convert(model, "if", activations={QCFS: lambda m: m}),
                lambda: swap_relu(model, "qcfs")):
        with pytest.raises(SnnconvError, match=r"^_Glue: conversion works on a copy of the model, and copy\.deepcopy "
                                               r"failed \(TypeError: cannot pickle '_thread\.lock' object\)") as err:
            run()
        assert "\n" not in str(err.value)


class _CompiledBlock(nn.Module):
    def __init__(self, act) -> None:
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 4, 3, padding=1), act(4)
        self.block = torch.compile(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), act(4)))
        self.fc = nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.a1(self.c1(x))).flatten(1))


def test_a_compiled_submodule_converts_as_the_module_inside():
    """``self.block = torch.compile(block)`` was refused with torch.fx's "symbolically trace a
    dynamo-optimized function" and a hint at data-dependent control flow; a compiled model
    converted already (as the model inside), and a compiled submodule now does too."""
    assert_exact(_CompiledBlock, _x())

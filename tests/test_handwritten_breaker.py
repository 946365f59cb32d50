"""Hand-written models that once converted to a silently wrong SNN: each is now refused in
one line naming the layer and the fix, or converts exactly (checked against the ANN)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_exact
from snnconv import SnnconvError, convert, simulate
from snnconv.metrics import running_average


def _x(batch: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


class _TwoLayers(nn.Module):
    """conv -> act -> conv -> act -> ``self.glue(h, x)`` -> linear."""

    def __init__(self, act, glue) -> None:
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 4, 3, padding=1), act(4) if act else nn.ReLU()
        self.c2, self.a2 = nn.Conv2d(4, 4, 3, padding=1), act(4) if act else nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 3)
        self.glue = glue

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a2(self.c2(self.a1(self.c1(x))))
        return self.fc(self.glue(h, x).flatten(1))


def _relu_if_output(model: nn.Module, x: torch.Tensor, steps: int = 256) -> torch.Tensor:
    snn = convert(model.double().eval(), "if", calibration=x, threshold="max")
    return running_average(simulate(snn, x, steps))[-1]


def test_mT_over_the_batch_of_a_2d_value_is_refused_and_over_tokens_converts():
    """``h.mT`` of a ``[B, C]`` value swaps the batch (which carries time) with C, like
    ``h.T``; it once ran on the folded window: ``f - f.mT[:, :1].mT`` subtracted the first
    step of sample 0 instead of sample 0's value (ReLU source at T = 256: error 0.019 on
    outputs of 0.055). On tokens ``[B, N, C]`` it is a transpose of dims >= 1."""
    for attribute in ("mT", "mH"):
        def glue(h, x, attribute=attribute):
            f = h.flatten(1)
            first = getattr(getattr(f, attribute)[:, :1], attribute)  # sample 0 in the ANN
            return f - first

        torch.manual_seed(0)
        model = _TwoLayers(None, glue)
        x = _x()
        with pytest.raises(SnnconvError, match=rf"{attribute} over dim 0.*dims >= 1") as err:
            _relu_if_output(model, x)
        assert "\n" not in str(err.value)

    def tokens(h, x):  # [B, 4, 64] -> [B, 64, 4] -> back: exact
        t = h.flatten(2)
        return (t.mT * 2.0).mT.reshape(h.shape)

    assert_exact(lambda act: _TwoLayers(act, tokens), _x())


class _Centred(nn.Module):
    """Centres the analog input over the batch before the first layer: ``centre(x)``."""

    def __init__(self, act, centre) -> None:
        super().__init__()
        self.body = _TwoLayers(act, lambda h, x: h)
        self.centre = centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.centre(x))


@pytest.mark.parametrize("centre, spelled", [
    (lambda x: x - x.mean(0, keepdim=True), "mean over dim 0"),
    (lambda x: x - x.mean(), "mean over dim 0"),
    (lambda x: x - torch.sum(x, dim=0) / 40, "sum over dim 0"),
    (lambda x: x - x[:1], "getitem over dim 0"),
])
def test_a_reduction_over_the_batch_of_the_analog_input_is_refused(centre, spelled):
    """Before the first activation a value is computed once per chunk of the batch that
    simulate() runs (8 MiB windows on CPU): ``x - x.mean(0)`` there once centred each
    chunk on its own mean, so one sample's output depended on the chunking (GN at T = 1:
    exact on 40 samples in one chunk, error 0.016 in chunks of a few), silently."""
    from snnconv import QCFS

    torch.manual_seed(0)
    model = _Centred(QCFS, centre).double().eval()
    with pytest.raises(SnnconvError, match=rf"{spelled}.*mixes the samples.*dims >= 1") as err:
        convert(model, "gn", group_size=4)
    assert "\n" not in str(err.value)


def test_per_sample_reductions_of_the_analog_input_still_convert():
    """Centring each sample on its own mean (dims >= 1) is affine per sample: exact."""
    assert_exact(lambda act: _Centred(act, lambda x: x - x.mean((1, 2, 3), keepdim=True)), _x())


def test_a_model_on_the_meta_device_is_refused_in_one_line():
    """A model built on ``meta`` (shapes, no weights) once failed deep inside the converter
    with torch's RuntimeError (``Tensor.item() cannot be called on meta tensors``)."""
    from snnconv import QCFS

    model = _TwoLayers(QCFS, lambda h, x: h).to("meta")
    with pytest.raises(SnnconvError, match=r"'c1.weight' is on the meta device.*load_state_dict") as err:
        convert(model, "if")
    assert "\n" not in str(err.value)


class _SideEffect(nn.Module):
    """``F.relu`` (so swap_relu rewrites the graph), then an in-place op whose result is unused:
    ``edit(z)`` changes z, which the next layer reads."""

    def __init__(self, edit, act=None) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(256, 3)
        self.edit, self.act = edit, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.c1(x)) if self.act is not None else F.relu(self.c1(x))
        z = self.c2(h)
        self.edit(z)
        return self.fc(z.flatten(1))


@pytest.mark.parametrize("edit", [
    lambda z: z.clamp_(0, 0.1),
    lambda z: F.hardtanh_(z, 0.0, 0.1),
    lambda z: z.__setitem__((slice(None), 0), 0.0),
    lambda z: z.sigmoid_(),
], ids=["clamp_", "hardtanh_", "setitem", "sigmoid_"])
def test_swap_relu_keeps_in_place_updates_whose_result_is_unused(edit):
    """swap_relu once ran dead-code elimination on the traced graph, which dropped in-place
    updates made for their effect (``z.clamp_(0, 0.1)``, ``z[:, 0] = 0``): the QCFS source
    it returned computed another function than the model (error 0.018 to 0.27)."""
    from snnconv import QCFS, swap_relu

    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    swapped = swap_relu(_SideEffect(edit).eval(), "qcfs", levels=4).eval()
    torch.manual_seed(0)
    reference = _SideEffect(edit, QCFS(4)).eval()  # the same weights (same seed), QCFS by hand
    with torch.no_grad():
        assert torch.equal(swapped(x.clone()), reference(x.clone()))


class _Written(nn.Module):
    """conv -> act -> conv -> ``self.glue(z)`` -> linear, for models traced by the user."""

    def __init__(self, act, glue) -> None:
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 4, 3, padding=1), act(4)
        self.c2, self.fc = nn.Conv2d(4, 4, 3, padding=1), nn.Linear(256, 3)
        self.glue = glue

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.glue(self.c2(self.a1(self.c1(x)))).flatten(1))


def _clamp_out(z):
    torch.clamp(z, 0, 0.05, out=z)
    return z


def _add_in_place(z):
    v = z.view(z.shape)
    z.add_(1.0)
    return v * 2  # reads the update through the view taken before: refused


def _add_in_place_read_again(z):
    z.add_(1.0)
    return z * 2


def test_a_model_traced_with_torch_fx_gets_the_same_checks_as_the_model():
    """A ``torch.fx.symbolic_trace``-d model was converted as it was, without the checks
    ``convert()`` makes while tracing: ``torch.clamp(z, 0, m, out=z)`` then converted to a
    network that read z unclipped (ReLU source at T = 512: error 0.064 on outputs of 0.061),
    ``torch.clamp(input=z, ...)`` failed with an IndexError, and ``z.add_(1)`` was refused as
    an unknown method. Each now behaves as for the untraced model."""
    from torch import fx

    relu = lambda levels: nn.ReLU()  # noqa: E731 (plain fx traces into QCFS: a ReLU source)
    x = _x()
    torch.manual_seed(0)
    with pytest.raises(SnnconvError, match=r"writes its result into .* \(out=.*assign the result instead") as err:
        convert(fx.symbolic_trace(_Written(relu, _clamp_out)).double(), "if", calibration=x)
    assert "\n" not in str(err.value)
    with pytest.raises(SnnconvError, match=r"x\.add_\(y\)\) overwrites .* in place"):
        convert(fx.symbolic_trace(_Written(relu, _add_in_place)).double(), "if", calibration=x)
    for glue in (lambda z: torch.clamp(input=z, min=0, max=0.05) * 10, _add_in_place_read_again):
        torch.manual_seed(0)
        model = _Written(relu, glue).double().eval()
        with torch.no_grad():
            ann = model(x)
        outputs = [running_average(simulate(convert(m, "if", calibration=x, threshold="max"), x, 512))[-1]
                   for m in (model, fx.symbolic_trace(model))]
        assert torch.equal(outputs[0], outputs[1])
        assert (outputs[1] - ann).abs().max() < 0.02 * ann.abs().max()


class _ScaledResidual(nn.Module):
    """``relu(torch.add(h, conv(h), alpha=0.25))``: the conv reaches the neuron scaled by 0.25."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.c1(x))
        return self.fc(F.relu(torch.add(h, self.c2(h), alpha=0.25)).flatten(1))


def test_bias_calibration_does_not_shift_a_bias_that_reaches_the_neuron_scaled():
    """Bias calibration shifts a bias by the layer's mean pre-activation error, which is
    right when the bias reaches the neuron one for one. Through ``torch.add(h, conv(h),
    alpha=0.25)`` it moved the input by a quarter of that and left 3/4 of the error
    (0.0007 of 0.0010 per channel) while reporting the conv's bias as calibrated."""
    from snnconv.convert.bias_calibration import bias_calibration
    from snnconv.convert.calibrate import calibrate_thresholds
    from snnconv.convert import prepare

    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    model = _ScaledResidual().eval()
    snn = convert(model, "if", calibration=x, threshold=99.0)
    ann = prepare(model)
    calibrate_thresholds(ann, [x], 99.0)
    before = {k: v.clone() for k, v in snn.graph.state_dict().items()}
    done = bias_calibration(ann, snn, [x], 4, target="preactivation")
    assert done == {"site_0": "bias of c1", "site_1": "none"}
    assert torch.equal(snn.graph.c2.bias, before["c2.bias"])


class _PerSampleScore(nn.Module):
    """A ReLU on one number per sample (``[B]``) after one on tokens ``[B, N, F]``."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.l2(F.relu(self.l1(x))).sum((1, 2)))


def test_per_channel_thresholds_give_a_one_number_activation_one_threshold():
    """``per_channel=True`` once failed with torch's IndexError on an activation of shape
    ``[B]`` (no dim 1); it has one channel, so one threshold, and converts like per layer."""
    x = torch.rand(32, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) - 0.3
    torch.manual_seed(0)
    model = _PerSampleScore().double().eval()
    with torch.no_grad():
        ann = model(x)
    snn = convert(model, "if", calibration=x, threshold="max", per_channel=True)
    assert [tuple(n.threshold.shape) for _, n in snn.spiking_layers()] == [(4, 1), ()]
    out = running_average(simulate(snn, x, 1024))[-1]
    assert (out - ann).abs().max() < 0.002 * ann.abs().max()


class _TrainedClip(nn.Module):
    """A clip activation with a trained bound, written by hand: clamp(x, 0, self.up)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, torch.zeros_like(self.up), self.up)


def test_a_clamp_with_tensor_bounds_inside_an_activation_class_names_the_class_and_the_mapping():
    """The refusal said "use min=0" for ``clamp(x, zeros, self.up)`` inside the user's
    activation class, without naming the class or the ``activations=`` mapping."""
    model = _TwoLayers(lambda levels: _TrainedClip(), lambda h, x: h).double()
    with pytest.raises(SnnconvError, match=r"module 'a1' \(_TrainedClip\) computes clamp.*activations=\{_TrainedClip:") as err:
        convert(model, "if")
    assert "\n" not in str(err.value)


def test_a_global_module_hook_is_refused_by_convert_and_simulate():
    """A hook installed for every module (``register_module_forward_hook``) that clamps conv
    outputs ran on the SNN's windows: GN at T = 1 missed the QCFS source by 0.013 and CIF
    the clip-floor one by 0.04, silently."""
    from torch.nn.modules.module import register_module_forward_hook

    from snnconv import QCFS

    def clamp_convs(module, inputs, output):
        return output.clamp(max=0.2) if isinstance(module, nn.Conv2d) else None

    torch.manual_seed(0)
    model = _TwoLayers(QCFS, lambda h, x: h).double()
    snn = convert(model, "if")
    handle = register_module_forward_hook(clamp_convs)
    try:
        for run in (lambda: convert(model, "if"), lambda: simulate(snn, _x(), 4)):
            with pytest.raises(SnnconvError, match=r"global forward hook \(clamp_convs.*handle\.remove\(\)") as err:
                run()
            assert "\n" not in str(err.value)
    finally:
        handle.remove()
    assert simulate(snn, _x(), 4).shape == (4, 5, 3)


class _FlattenFromTheEnd(nn.Module):
    def __init__(self, flatten) -> None:
        super().__init__()
        from snnconv import QCFS

        self.c1, self.a1, self.fc = nn.Conv2d(3, 4, 3, padding=1), QCFS(4), nn.Linear(256, 3)
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.a1(self.c1(x))))


@pytest.mark.parametrize("flatten", [lambda h: h.flatten(-3), nn.Flatten(-3), lambda h: torch.flatten(h, start_dim=-3, end_dim=3)],
                         ids=["method", "module", "function"])
def test_nir_export_of_a_flatten_from_the_end_keeps_its_dims(flatten):
    """``h.flatten(-3)`` of ``[B, C, H, W]`` is ``h.flatten(1)``; the NIR export wrote its
    start as -4 (one less, as for a dim counted from the front), which a consumer running
    batched ``[B, C, H, W]`` data reads as the batch."""
    pytest.importorskip("nir")
    import warnings

    from snnconv.export.nir import to_nir

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = to_nir(convert(_FlattenFromTheEnd(flatten).eval(), "if"), (3, 8, 8))
    (node,) = [v for v in graph.nodes.values() if type(v).__name__ == "Flatten"]
    assert node.start_dim in (0, -3) and node.end_dim in (-1, 2)
    assert tuple(node.output_type["output"]) == (256,)


def _scale_through_data(h, x):
    h.data.mul_(0.5)  # old-style in-place edit through .data: the ANN's h is halved
    return h


def _shift_tokens_through_mT(h, x):
    t = h.flatten(2)  # [B, 4, 64]
    t.mT.add_(1.0)  # a view of t: t is shifted
    return t.reshape(h.shape)


class _ReluThroughData(nn.Module):
    """``z.data.clamp_(min=0)``: a ReLU written in place through ``.data``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.c1(x)
        z.data.clamp_(min=0)
        return self.fc(F.relu(self.c2(z)).flatten(1))


@pytest.mark.parametrize("glue", [_scale_through_data, _shift_tokens_through_mT], ids=["data.mul_", "mT.add_"])
def test_an_in_place_update_through_data_or_mT_is_refused_when_the_tensor_is_read_again(glue):
    """``h.data`` (and ``h.mT``) is h's memory under another name, but was taken for a size
    read (``h.data.mul_(0.5)``: a number, skipped) or a new value: the update was dropped
    (GN at T = 1 missed the ANN by 0.009, ``h.data.add_(1)`` by 0.33), silently."""
    from snnconv import QCFS

    torch.manual_seed(0)
    with pytest.raises(SnnconvError, match=r"overwrites .* in place, which .* reads under another name") as err:
        convert(_TwoLayers(QCFS, glue).double(), "gn", group_size=4)
    assert "\n" not in str(err.value)


def test_an_in_place_relu_through_data_is_refused():
    """``z.data.clamp_(min=0)`` is an in-place ReLU of z that the next layer reads as z; the
    converted network skipped it (ReLU source at T = 512: error 0.05 on outputs of 0.09)."""
    x = _x()
    torch.manual_seed(0)
    with pytest.raises(SnnconvError, match=r"activation 'clamp_' overwrites its input in place.*out-of-place form"):
        convert(_ReluThroughData().double(), "if", calibration=x)


_SPELLINGS = {  # each glue twice: the table's first spelling, then its other name
    "concatenate": (lambda h, x: torch.cat([h, -h], 1)[:, ::2], lambda h, x: torch.concatenate([h, -h], axis=1)[:, ::2]),
    "swapaxes": (lambda h, x: h.transpose(2, 3) * 2, lambda h, x: h.swapaxes(2, 3) * 2),
    "torch.swapdims": (lambda h, x: torch.transpose(h, 1, 3).contiguous(), lambda h, x: torch.swapdims(h, 1, 3).contiguous()),
    "moveaxis": (lambda h, x: h.movedim(1, 3).movedim(3, 1), lambda h, x: h.moveaxis(1, 3).moveaxis(3, 1)),
    "negative": (lambda h, x: 1.0 - h.neg(), lambda h, x: 1.0 - torch.negative(h).negative()),
    "multiply/divide/subtract": (lambda h, x: h.mul(3).div(2).sub(1), lambda h, x: h.multiply(3).divide(2).subtract(1)),
}


@pytest.mark.parametrize("name", list(_SPELLINGS))
def test_other_names_of_table_ops_convert_exactly_like_the_first(name):
    """``torch.concatenate``, ``.swapaxes``/``.swapdims``, ``.moveaxis``, ``.negative``,
    ``.multiply``/``.divide``/``.subtract`` are the same functions as ``cat``, ``transpose``,
    ``movedim``, ``neg``, ``mul``/``div``/``sub``, which convert; they were refused as unknown."""
    x = _x()
    for glue in _SPELLINGS[name]:
        assert_exact(lambda act, glue=glue: _TwoLayers(act, glue), x)


@pytest.mark.parametrize("glue", [
    lambda h, x: torch.concatenate([h, h], axis=0)[: h.shape[0]],
    lambda h, x: h.swapaxes(0, 1).swapaxes(0, 1),
    lambda h, x: torch.swapdims(h, 1, -4).swapdims(0, 1),
    lambda h, x: h.moveaxis(0, 1).moveaxis(1, 0),
], ids=["concatenate", "swapaxes", "swapdims", "moveaxis"])
def test_other_names_of_table_ops_over_the_batch_are_refused(glue):
    from snnconv import QCFS

    with pytest.raises(SnnconvError, match=r"over dim 0.*dims >= 1"):
        convert(_TwoLayers(QCFS, glue).double(), "gn", group_size=4)(_x(), 1)


def _doubling_forward(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return type(module).forward(module, z * 2.0)


def test_an_activation_whose_forward_was_replaced_on_the_instance_converts_what_it_computes():
    """``act.forward = MethodType(f, act)`` changes what a QCFS or ReLU computes, but the
    tracer kept it as one QCFS / ReLU node by its class: GN at T = 1 missed the ANN by
    0.006 and IF on a ReLU source by 0.034 of 0.12. It is traced into now: the ReLU's
    F.relu(2 z) converts; the QCFS's floor is named, with the activations= mapping."""
    import types

    from snnconv import QCFS

    x = _x()

    def build(act):
        model = _TwoLayers(act, lambda h, x: h)
        model.a2.forward = types.MethodType(_doubling_forward, model.a2)
        return model

    torch.manual_seed(0)
    model = build(None).double().eval()
    with torch.no_grad():
        ann = model(x)
    assert (_relu_if_output(model, x, 512) - ann).abs().max() < 0.01 * ann.abs().max()
    with pytest.raises(SnnconvError, match=r"module 'a2' \(QCFS\) computes function floor.*activations=\{QCFS:"):
        convert(build(QCFS).double(), "gn", group_size=4)


class _TiedConvs(nn.Module):
    """c3 holds c2's weight and bias (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c3.weight, self.c3.bias = self.c2.weight, self.c2.bias
        self.fc = nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.c1(x))
        h = F.relu(self.c2(h))
        return self.fc(F.relu(self.c3(h)).flatten(1))


def test_snn_calibration_leaves_a_tied_layer_alone():
    """SNN Calibration shifts one layer's bias (or fits its weights) for one neuron; a
    layer whose weight and bias another layer also holds (``c3.weight = c2.weight``) moved
    that layer's neuron too, which its own calibration then undid: now neither is
    calibrated (reported as ``none``), as for a layer called at two places."""
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    snn = convert(_TiedConvs().eval(), "if", calibration=x, snn_calibration="light", calibration_steps=4)
    assert snn.calibration["snnc"]["layers"] == {"site_0": "bias of c1", "site_1": "none", "site_2": "none"}
    assert snn.graph.c2.weight is snn.graph.c3.weight


class _PoolWithIndices(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.pool, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2, return_indices=True), nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, _ = self.pool(F.relu(self.c1(x)))
        return self.fc(values.flatten(1))


def test_the_max_pool_gate_refuses_a_max_pool_module_that_returns_indices_by_name():
    """``max_pool='gate'`` swapped an ``nn.MaxPool2d(return_indices=True)`` for a gate that
    returns values only, so ``values, _ = pool(h)`` unpacked the batch and the error blamed
    a 'getitem over dim 0' the user never wrote."""
    x = _x()
    torch.manual_seed(0)
    with pytest.raises(SnnconvError, match=r"layer 'pool' \(MaxPool2d after a spiking layer\).*without return_indices"):
        convert(_PoolWithIndices().double(), "if", calibration=x, max_pool="gate")


class _AnalogPoolWithIndices(nn.Module):
    def __init__(self, act) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.body = _TwoLayers(act, lambda h, x: h)
        self.body.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, _ = self.pool(x)  # max pooling of the analog input: exact
        return self.body(values)


def test_max_pooling_with_indices_of_the_analog_input_still_converts_exactly():
    """Unpacking ``values, indices`` of a max pool is no index over the batch."""
    assert_exact(_AnalogPoolWithIndices, _x())


@pytest.mark.parametrize("where", ["analog", "spiking"])
def test_a_reshape_that_merges_samples_is_refused_when_it_runs(where):
    """``h - h.view(1, -1).mean(1)`` is a batch mean written as a reshape; no dim-0 op
    appears, so it once converted, and each sample's output depended on the chunk of the
    batch simulate() ran it in."""
    from snnconv import QCFS

    def centre(v):
        return v - v.view(1, -1).mean(1, keepdim=True).view(1, 1, 1, 1)

    glue = (lambda h, x: h) if where == "analog" else (lambda h, x: centre(h))
    model = _TwoLayers(QCFS, glue)
    if where == "analog":
        model = _Centred(QCFS, centre)
    snn = convert(model.double(), "gn", group_size=4)
    with pytest.raises(SnnconvError, match=r"returns 1 rows along dim 0 from \d+ samples.*merges samples") as err:
        simulate(snn, _x(), 2)
    assert "\n" not in str(err.value)


def test_a_model_on_the_meta_device_is_refused_before_an_activations_mapping_probes_it():
    from snnconv import QCFS

    class MyClip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.Parameter(torch.tensor(1.0))

        def forward(self, z):
            return torch.minimum(F.relu(z), self.up)

    model = _TwoLayers(lambda levels: MyClip(), lambda h, x: h).to("meta")
    with pytest.raises(SnnconvError, match=r"'c1.weight' is on the meta device"):  # not "cannot check the mapping"
        convert(model, "if", activations={MyClip: lambda m: QCFS(4, 1.0)})


class _TokenRows(nn.Module):
    """Tokens merged into dim 0, whose size is then read off the merged rows."""

    def __init__(self, act) -> None:
        super().__init__()
        self.c1, self.a1, self.lin, self.fc = nn.Conv2d(3, 4, 3, padding=1), act(4), nn.Linear(4, 6), nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a1(self.c1(x))
        rows = self.lin(h.flatten(2).transpose(1, 2).reshape(-1, 4))  # [B * 64, 6]
        first = rows.view(rows.shape[0], 2, 3)[:, 0].sum(-1)  # per token: [B * 64]
        return self.fc(first.view(x.shape[0], -1))


def test_a_size_read_off_tokens_merged_into_dim_0_is_the_anns():
    """``rows.shape[0]`` of ``[B * 64, 6]`` rows read as the batch B in the SNN (the engine
    tagged every dim-0 read as the batch), so ``rows.view(rows.shape[0], 2, 3)`` failed with
    a raw shape error, or regrouped the tokens where the shape allowed it."""
    assert_exact(_TokenRows, _x())


class _ActivationOnTokenRows(nn.Module):
    """An activation on tokens merged into dim 0: ``relu(lin(h.reshape(-1, C)))``."""

    def __init__(self, act) -> None:
        super().__init__()
        self.c1, self.a1, self.lin, self.a2 = nn.Conv2d(3, 4, 3, padding=1), act(4), nn.Linear(4, 4), act(4)
        self.fc = nn.Linear(64 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.a1(self.c1(x)).flatten(2).transpose(1, 2)  # [B, 64, 4]
        return self.fc(self.a2(self.lin(tokens.reshape(-1, 4))).reshape(x.shape[0], -1))


def test_an_activation_on_tokens_merged_into_dim_0_is_refused_with_the_fix():
    """Spiking layers keep one row per sample (per step) along dim 0; the refusal also says
    how to keep merged tokens apart (the generic "selects, moves or merges dim 0" alone
    reads as a batch-size bug)."""
    from snnconv import QCFS

    snn = convert(_ActivationOnTokenRows(lambda c: QCFS(4)).double().eval(), "gn", group_size=4)
    with pytest.raises(SnnconvError, match=r"returns 64 rows .* merges dim 0 .*if tokens or positions were merged into dim 0 by h.reshape\(-1, C\), keep them in their own dim: nn.Linear acts on the last dim"):
        simulate(snn, _x(), 4)


class _WithOptions(nn.Module):
    """forward(x, mask=None, return_features=False, scale=2.0), called with x alone."""

    def __init__(self, act) -> None:
        super().__init__()
        self.body = _TwoLayers(act, lambda h, x: h)

    def forward(self, x, mask=None, return_features=False, scale=2.0):
        h = self.body.a2(self.body.c2(self.body.a1(self.body.c1(x))))
        if mask is not None:
            h = h * mask
        if return_features:
            return h
        return self.body.fc(h.flatten(1)) * scale


def test_forward_options_with_defaults_take_their_defaults():
    """A spiking network is driven by the input alone, so forward's other arguments take
    their defaults; fx traced them as inputs, so ``if return_features:`` was refused as
    "data-dependent control flow" and ``if mask is not None: h = h * mask`` as "a mul of
    two input-dependent values", though the ANN called with x never runs either."""
    assert_exact(_WithOptions, _x())


class _Lazy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from snnconv import QCFS

        self.c, self.a, self.fc = nn.LazyConv2d(4, 3), QCFS(4), nn.LazyLinear(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.a(self.c(x)).flatten(1))


def test_a_lazy_module_that_never_ran_is_refused_in_one_line_and_converts_once_run():
    """Was torch's multi-line ValueError from deepcopy (an uninitialized parameter)."""
    model = _Lazy()
    with pytest.raises(SnnconvError, match=r"'c.weight' is uninitialized \(a lazy module.*model\(x\)") as err:
        convert(model, "if")
    assert "\n" not in str(err.value)
    x = _x().float()
    with torch.no_grad():
        ann = model.eval()(x)
    out = convert(model, "gn", group_size=4)(x, 1)[0]
    assert torch.allclose(out, ann, atol=1e-5)


def test_modules_built_inside_forward_convert_as_their_function_or_are_named():
    """``nn.AdaptiveAvgPool2d(1)(h)`` or ``nn.ReLU()(h)`` written in forward() compute a fixed
    function; torch.fx refused them ("module is not installed as a submodule"), reported
    as data-dependent control flow. A module with weights built there gets new ones at every
    call: named, with the fix."""
    from snnconv import QCFS

    def pooled(h, x):
        return h + nn.AdaptiveAvgPool2d((None, 1))(h) + nn.Flatten(2)(h).mean(-1)[..., None, None]

    assert_exact(lambda act: _TwoLayers(act, pooled), _x())
    torch.manual_seed(0)
    model = _TwoLayers(None, lambda h, x: nn.ReLU()(h - 0.01)).double().eval()  # a ReLU built in forward: a site
    with torch.no_grad():
        ann = model(_x())
    assert (_relu_if_output(model, _x(), 512) - ann).abs().max() < 0.01 * ann.abs().max()
    with pytest.raises(SnnconvError, match=r"forward\(\) builds a QCFS at every call \(with 'threshold' new each time\).*__init__") as err:
        convert(_TwoLayers(QCFS, lambda h, x: QCFS(4)(h)).double(), "if")
    assert "\n" not in str(err.value)


class _Autocast(nn.Module):
    """conv -> act under ``torch.autocast`` inside forward(), as ``with`` or as a decorator."""

    def __init__(self, act, enabled: bool = True, decorator: bool = False) -> None:
        super().__init__()
        self.c1, self.a1, self.fc = nn.Conv2d(3, 4, 3, padding=1), act(4), nn.Linear(4 * 8 * 8, 3)
        self.enabled, self.decorator = enabled, decorator

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.a1(self.c1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.decorator:
            h = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.enabled)(self.features)(x)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.enabled):
                h = self.features(x)
        return self.fc(h.to(x.dtype).flatten(1))


@pytest.mark.parametrize("decorator", [False, True], ids=["with", "decorator"])
def test_autocast_inside_forward_is_refused_and_disabled_autocast_converts(decorator):
    """torch.fx records no node for an autocast entered in forward(): the SNN computed in
    float32 where the ANN computed its convolutions in bfloat16 (GN at T = 1, exact without
    autocast, missed the ANN by 0.11 on a random two-layer net, inputs in [0, 7)), silently."""
    from snnconv import QCFS

    with pytest.raises(SnnconvError, match=r"_Autocast.forward\(\) enters torch.autocast\('cpu', dtype=torch.bfloat16\).*model.to"):
        convert(_Autocast(QCFS, decorator=decorator).eval(), "gn", group_size=4)
    assert_exact(lambda act: _Autocast(act, enabled=False, decorator=decorator), _x())

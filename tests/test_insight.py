"""Counters (spikes, SOPs, energy), layer-wise conversion error, comparison reports."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from snnconv import ClipFloor, QCFS, SnnconvError, convert, simulate
from snnconv.insight import CostCounter, cost_profile, layerwise_error

from helpers import make_source


def _pool_net() -> nn.Sequential:
    """conv(1->2, 3x3, pad 1) on 4x4 -> IF -> conv(2->3, 3x3, stride 2, pad 1) -> IF -> avgpool 2 -> fc(3->5)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), QCFS(4, threshold=0.5), nn.Conv2d(2, 3, 3, stride=2, padding=1), QCFS(4, threshold=0.3),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3, 5),
    ).double().eval()
    with torch.no_grad():  # positive weights: every layer fires
        for layer in (model[0], model[2]):
            layer.weight.abs_()
            layer.bias.fill_(0.05)
    return model


def test_fanout_and_macs_by_hand():
    snn = convert(_pool_net(), "if")
    profile = cost_profile(snn, torch.rand(1, 1, 4, 4, dtype=torch.float64))
    # Stride-2 conv, padding 1, on 4x4: output row 0 reads rows -1..1, row 1 reads rows 1..3,
    # so input rows (and columns) 0..3 feed 1, 2, 1, 1 output rows; times 3 output channels.
    per_axis = torch.tensor([1.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    expected0 = (3 * per_axis[:, None] * per_axis[None, :]).expand(2, 4, 4)
    assert torch.equal(profile.fanout["site_0"], expected0)
    # [3, 2, 2] -> 2x2 average pool (one window each) -> flatten -> 5 outputs.
    assert torch.equal(profile.fanout["site_1"], torch.full((3, 2, 2), 5.0, dtype=torch.float64))
    # MACs: conv1 2*16 outputs x 9, conv2 3*4 outputs x 18, fc 5 x 3.
    assert profile.ann_macs == 288 + 216 + 15
    assert profile.input_macs == 288


def test_sops_equal_hand_count_of_events_times_fanout():
    model = _pool_net()
    snn = convert(model, "if")
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    counter = CostCounter(snn, x)
    windows = {}

    class Keep:
        def record(self, name, neuron, out):
            windows[name] = out.clone()

    simulate(snn, x, 6, recorder=counter)
    simulate(snn, x, 6, recorder=Keep())
    for name, out in windows.items():
        theta = float(dict(snn.spiking_layers())[name].threshold)
        spikes = torch.round(out / theta)  # IF: 0/1 per step
        assert spikes.sum() > 0
        hand = (spikes * counter.profile.fanout[name]).flatten(2).sum((1, 2))
        assert torch.allclose(counter.sops[name], hand)
        assert torch.allclose(counter.events[name], spikes.flatten(1).sum(1))
    summary = counter.summary()
    assert summary["sops"] == pytest.approx(sum(float(s.sum()) for s in counter.sops.values()) / 3)
    assert summary["energy_pj"] == pytest.approx(4.6 * 288 + 0.9 * summary["sops"])
    assert summary["energy_ratio"] == pytest.approx(summary["energy_pj"] / (4.6 * 519))


def test_linear_sops_with_known_counts():
    """Constant drives 0.5, 0.25, 1.0 into clip-floor IF (θ = 1, v(0) = 0) for T = 4 give
    2, 1, 4 spikes; each spike reaches 4 outputs: 28 SOPs per image. A GN (τ = 2) sends the
    same events in fewer steps: the same 7 events and 28 SOPs."""
    model = nn.Sequential(nn.Linear(2, 3), ClipFloor(4, threshold=1.0), nn.Linear(3, 4)).double().eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([0.5, 0.25, 1.0]))
    x = torch.zeros(2, 2, dtype=torch.float64)
    for neuron, options, steps in (("if", {}, 4), ("gn", {"group_size": 2}, 2)):
        counter = CostCounter(convert(model, neuron, **options), x)
        simulate(convert(model, neuron, **options), x, steps, recorder=counter)
        summary = counter.summary()
        assert summary["spike_events"] == 7 and summary["sops"] == 28
        assert summary["input_macs"] == 6 and summary["ann_macs"] == 6 + 12


def test_silent_network_has_zero_sops():
    model = _pool_net()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)  # never reaches the threshold
        model[2].bias.fill_(-1.0)
    snn = convert(model, "if")
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    counter = CostCounter(snn, x)
    simulate(snn, x, 8, recorder=counter)
    assert counter.total_sops() == 0 and counter.total_events() == 0
    assert counter.summary()["energy_pj"] == pytest.approx(4.6 * 288)  # the analog first layer only


@pytest.mark.parametrize("neuron, sleep", [("if", 0), ("gn", 0), ("tpp", 0), ("cif", 4)])
def test_counters_do_not_change_outputs(neuron, sleep):
    model, x = make_source("small_cnn", "qcfs", batch=4, dtype=torch.float32)
    snn = convert(model, neuron)
    counter = CostCounter(snn, x)
    plain = simulate(snn, x, 4, sleep_steps=sleep, seed=3)
    counted = simulate(snn, x, 4, sleep_steps=sleep, seed=3, recorder=counter)
    assert torch.equal(plain, counted)
    assert counter.total_events() > 0 and counter.sops_per_step().shape == (4 + sleep,)


def test_counter_shape_mismatch_is_a_clear_error():
    model, x = make_source("small_cnn", "qcfs", batch=2, size=8, dtype=torch.float32)
    snn = convert(model, "if")
    counter = CostCounter(snn, torch.rand(1, 1, 12, 12))
    with pytest.raises(SnnconvError, match="simulated shape"):
        simulate(snn, x, 2, recorder=counter)


def test_layerwise_error_gn_tau_l_is_zero_at_t1():
    model, x = make_source("small_cnn", "qcfs", levels=4, batch=6, dtype=torch.float64)
    errors = layerwise_error(model, convert(model, "gn", group_size=4), x, [1, 2])
    assert list(errors) == ["site_0", "site_1", "site_2", "site_3"]
    assert all(e[0] == 0.0 for e in errors.values())
    if_errors = layerwise_error(model, convert(model, "if"), x, [1, 4, 32])
    assert if_errors["site_0"][0] > 0.05  # one IF step cannot carry 4 levels
    assert if_errors["site_0"][-1] < if_errors["site_0"][0]


def test_layerwise_error_for_window_and_sleep_methods():
    model, x = make_source("small_cnn", "clipfloor", levels=4, batch=4, dtype=torch.float64)
    tpp = layerwise_error(model, convert(model, "tpp"), x, [2, 4])
    assert all(len(v) == 2 for v in tpp.values())
    cif = layerwise_error(model, convert(model, "cif"), x, 4, sleep_steps=8)
    assert all(len(v) == 12 for v in cif.values())
    assert cif["site_0"][3] == pytest.approx(0.0, abs=1e-20)  # first layer: constant input, exact after T = L


def test_compare_report_folder(digits_source, tmp_path):
    from PIL import Image

    from snnconv.report import PLOTS, compare, parse_methods, redraw_report

    *_, checkpoint = digits_source
    specs = parse_methods("if,gn,tpp,cif", [1, 2], seeds=[0, 1], sleep_steps=2, levels=4)
    results = compare(checkpoint, specs, tmp_path / "rep", limit=24, error_samples=4, progress=False)
    files = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert files == sorted(["results.json", "report.md", *PLOTS])
    for name in PLOTS:
        with Image.open(tmp_path / "rep" / name) as image:
            image.verify()
    saved = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for key in ("dataset", "model", "ann_accuracy"):
        assert key in saved
    by_neuron = {r["neuron"]: r for r in saved["runs"]}
    for run in saved["runs"]:
        for key in ("neuron", "options", "T", "accuracy", "latency_steps", "permute", "seeds", "accuracy_std",
                    "spike_events_per_image", "spiking_layers"):
            assert key in run
        assert len(run["cost"]["energy_ratio"]) == len(run["accuracy"]) == len(run["layer_error"]["steps"])
    assert by_neuron["cif"]["total_steps"] == list(range(1, 7)) and "clip-floor" in by_neuron["cif"]["note"]
    assert by_neuron["tpp"]["seeds"] == [0, 1] and by_neuron["if"]["seeds"] == [0]
    # the IF events at the largest T match the evaluate pipeline's own count
    assert by_neuron["if"]["cost"]["spike_events_per_image"][-1] == pytest.approx(by_neuron["if"]["spike_events_per_image"])
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "energy SNN / ANN" in report and "gn (group_size=4)" in report
    for name in PLOTS:
        (tmp_path / "rep" / name).unlink()
    redraw_report(tmp_path / "rep" / "results.json")
    assert all((tmp_path / "rep" / name).exists() for name in PLOTS)


def test_missing_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    from snnconv.report import plot_accuracy_latency

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SnnconvError, match=r"snnconv\[plot\]"):
        plot_accuracy_latency({"runs": [], "ann_accuracy": 1.0, "dataset": "d", "model": "m"}, tmp_path / "x.png")


def test_cli_compare_and_redraw(digits_source, tmp_path, capsys):
    from snnconv.cli import main

    *_, checkpoint = digits_source
    out = tmp_path / "cmp"
    assert main(["compare", str(checkpoint), "--neurons", "if,gn", "--group-size", "2", "-T", "1,4", "--limit", "30",
                 "--error-samples", "0", "--no-progress", "--out", str(out)]) == 0
    assert "| gn (group_size=2) | 4 |" in capsys.readouterr().out
    assert main(["compare", str(checkpoint), "--out", str(out), "--redraw"]) == 0
    assert main(["compare", str(checkpoint), "--neurons", "if+sideways", "--out", str(out)]) == 2


class _Block(nn.Module):
    """A QCFS module called twice, F.relu6 and a clamp: four activations inside one module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.act = QCFS(4, threshold=0.5)

    def forward(self, x):
        h = torch.nn.functional.relu6(self.act(self.conv(x)) * 8.0)
        return torch.clamp(self.act(h * 0.1), 0, 1.0)


def test_layers_are_named_by_their_path_in_the_source():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), QCFS(4, threshold=0.5), _Block(), nn.Flatten(),
                          nn.Linear(32, 3)).double().eval()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    expected = {"site_0": "1", "site_1": "2.act", "site_2": "2.relu6", "site_3": "2.act#2", "site_4": "2.clamp"}
    from snnconv.convert import activation_sites, prepare
    from snnconv.insight import layer_paths

    assert {name: site.path for name, site in activation_sites(prepare(model))} == expected
    snn = convert(model, "if")
    assert {name: neuron.path for name, neuron in snn.spiking_layers()} == expected == layer_paths(snn)
    counter = CostCounter(snn, x)
    simulate(snn, x, 3, recorder=counter)
    layers = counter.summary()["layers"]
    assert list(layers) == list(expected)  # the keys stay the graph names
    assert {name: layer["path"] for name, layer in layers.items()} == expected == counter.paths
    # The printed network: execution order, each neuron at its source path under its own name.
    lines = repr(snn).splitlines()
    assert lines[0] == "SpikingNetwork(neuron='if', 5 spiking layers:"
    neuron_rows = [line.split() for line in lines if "Neuron(" in line]
    assert [(row[0], row[1], row[2].split("(")[0]) for row in neuron_rows] == [
        (path, f"({name})", "IFNeuron") for name, path in expected.items()]
    assert lines[1].split()[0] == "0" and lines[-2].split()[0] == "4"  # first conv, last linear
    errors = layerwise_error(model, snn, x, [1, 2])
    assert list(errors) == list(expected) and errors.paths == expected
    assert json.loads(json.dumps(errors)) == {k: v for k, v in errors.items()}  # still plain JSON

"""The QCFS training recipe: lambda from data, the clip limit, bf16 on CPU (spec section 1)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from snnconv import SnnconvError, convert
from snnconv.activations import QCFS, Clip, QuantizedClip, clip_limit, init_thresholds
from snnconv.cli import main
from snnconv.engine import simulate
from snnconv.models import create_model
from snnconv.train import TrainConfig, cpu_has_bf16, train


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), QCFS(4), nn.Flatten(),
                         nn.Linear(6 * 36, 10), QCFS(4), nn.Linear(10, 3))


def test_init_thresholds_takes_the_percentile_of_positive_pre_activations_layer_by_layer():
    model = _net()
    x = torch.randn(64, 1, 6, 6)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}
    chosen = init_thresholds(model, x, percentile=80)
    with torch.no_grad():  # BN on batch statistics, as in the pass
        bn = model[1]
        z = nn.functional.batch_norm(model[0](x), None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    expected = torch.quantile(z[z > 0], 0.8)
    assert chosen[0] == pytest.approx(float(expected), rel=1e-5)
    assert model[2].threshold.item() == pytest.approx(chosen[0])
    # The second layer saw the first one's new lambda.
    with torch.no_grad():
        z2 = model[4](model[3](model[2](z)))
    assert chosen[1] == pytest.approx(float(torch.quantile(z2[z2 > 0], 0.8)), rel=1e-5)
    for key, value in before.items():  # BN statistics untouched
        assert torch.equal(model.state_dict()[key], value), key


def test_init_thresholds_reads_an_activation_called_by_keyword():
    class ByKeyword(nn.Module):  # self.act(z=h): the input arrives in kwargs (was a raw IndexError)
        def __init__(self, keyword: bool):
            super().__init__()
            self.keyword, self.body, self.act = keyword, _net()[:2], QCFS(4)

        def forward(self, x):
            h = self.body(x)
            return self.act(z=h) if self.keyword else self.act(h)

    x = torch.randn(32, 1, 6, 6)
    chosen = [init_thresholds(ByKeyword(keyword), x, percentile=80) for keyword in (True, False)]
    assert chosen[0] == chosen[1] and chosen[0][0] != 8.0


def test_init_thresholds_refuses_bad_input():
    with pytest.raises(SnnconvError, match="the batch used to initialise lambda holds NaN or inf"):
        init_thresholds(_net(), torch.full((4, 1, 6, 6), float("nan")))
    with pytest.raises(SnnconvError, match=r"the lambda percentile must be in \(0, 100\], got 0"):
        init_thresholds(_net(), torch.randn(4, 1, 6, 6), percentile=0)


def test_clip_limit_replaces_every_quantiser_and_leaves_the_source_alone():
    model = _net().eval()
    limit = clip_limit(model)
    assert sum(isinstance(m, Clip) for m in limit.modules()) == 2
    assert not any(isinstance(m, QuantizedClip) for m in limit.modules())
    assert sum(isinstance(m, QuantizedClip) for m in model.modules()) == 2
    z = torch.linspace(-3, 12, 31)
    assert torch.equal(limit[2](z), z.clamp(0, model[2].threshold.item()))
    assert clip_limit(create_model("small_cnn", activation="relu", width=4)) is None


def test_if_converges_to_the_clip_limit_at_large_T():
    """The clip limit is what IF (reset by subtraction, v(0) = theta/2) tends to: checked numerically."""
    model = _net(1).eval()
    with torch.no_grad():
        for q, value in zip([m for m in model.modules() if isinstance(m, QCFS)], (1.5, 2.5)):
            q.threshold.fill_(value)
        x = torch.randn(16, 1, 6, 6)
        target = clip_limit(model)(x)
        snn = convert(model, "if", initial_potential=0.5)
        error = {T: (simulate(snn, x, T).mean(0) - target).abs().max().item() for T in (8, 512)}
    assert error[512] < 0.05 < error[8]  # error[8] > 0: the limit is approached, not met early


def test_default_recipe_keeps_the_clip_limit_within_a_point_of_the_ann(digits_source):
    """The digits QCFS source (default recipe, 20 epochs) records both accuracies per epoch."""
    _, meta, _, _, _ = digits_source
    assert meta["train_config"]["decay_thresholds"] is True and meta["train_config"]["threshold_percentile"] == 85.0
    assert all({"test_accuracy", "clip_limit_accuracy", "train_seconds"} <= set(h) for h in meta["history"])
    assert meta["clip_limit_accuracy"] >= meta["ann_accuracy"] - 0.01  # no more than a point below the ANN


def test_evaluate_prints_the_clip_limit(digits_source, capsys):
    assert main(["evaluate", str(digits_source[4]), "-T", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "clip limit" in out and "ANN accuracy" in out


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_amp_trains_on_a_cpu_with_native_bf16(tmp_path):
    base = dict(dataset="digits", epochs=1, batch_size=256, seed=3, model_args={"width": 4})
    _, plain = train(TrainConfig(**base), tmp_path / "fp32", progress=False, log=lambda m: None)
    _, amp = train(TrainConfig(**base, amp=True), tmp_path / "bf16", progress=False, log=lambda m: None)
    assert amp["train_config"]["amp"] is True
    assert abs(amp["history"][0]["mean_loss"] - plain["history"][0]["mean_loss"]) < 0.1  # same run, bf16 rounding


def test_amp_without_native_bf16_is_a_clear_error(tmp_path, monkeypatch):
    import snnconv.train as train_module

    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: False)
    with pytest.raises(SnnconvError, match="native bf16"):
        train(TrainConfig(dataset="digits", epochs=1, amp=True, model_args={"width": 4}), tmp_path, progress=False, log=lambda m: None)
    assert not (tmp_path / "checkpoint.safetensors").exists()

"""Batched augmentation: each op against a per-image reference, and Cutout's recipe."""
from __future__ import annotations

import pytest
import torch

from snnconv import SnnconvError
from snnconv.augment import cutout, random_crop, random_flip
from snnconv.train import TrainConfig, augment_batch


def test_cutout_zeroes_one_clipped_square_per_image_like_the_reference():
    x = torch.randn(64, 3, 32, 32) + 5.0  # no zeros before Cutout
    out = cutout(x, 16, torch.Generator().manual_seed(0))
    replay = torch.Generator().manual_seed(0)
    cy, cx = torch.randint(0, 32, (64, 1), generator=replay), torch.randint(0, 32, (64, 1), generator=replay)
    for i in range(64):  # the authors' per-image rule: rows clip(y - 8, 0, H):clip(y + 8, 0, H)
        y, x0 = int(cy[i]), int(cx[i])
        expected = x[i].clone()
        expected[:, max(0, y - 8) : min(32, y + 8), max(0, x0 - 8) : min(32, x0 + 8)] = 0
        assert torch.equal(out[i], expected)
    zeroed = (out == 0).all(1).sum((1, 2))
    assert zeroed.max() == 256 and zeroed.min() >= 64  # a full square inside, a quarter at a corner
    assert zeroed.float().std() > 0  # centres vary per image


def test_cutout_off_draws_nothing_so_older_runs_stay_bit_identical():
    x = torch.randn(8, 3, 32, 32)
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with_off = augment_batch(x, 4, True, a, False, cutout_size=0)
    before = random_flip(random_crop(x, 4, b), b)
    assert torch.equal(with_off, before) and torch.equal(a.get_state(), b.get_state())


@pytest.mark.parametrize("bad", [-1, 2.5, True, "16"])
def test_bad_cutout_is_one_clear_line(bad):
    with pytest.raises(SnnconvError, match="cutout must be a whole number of pixels >= 0"):
        TrainConfig(cutout=bad).validate()


# --- AutoAugment (kornia's CIFAR-10 policy, applied in groups) ---------------------------
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _normalized_rgb(n: int, seed: int = 0) -> torch.Tensor:
    pixels = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)).float() / 255
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class _Recorder(torch.nn.Module):
    """A policy that records the batch sizes and pixel range it is called with and changes nothing."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append((x.shape[0], float(x.min()), float(x.max())))
        return x


def test_autoaugment_sees_pixels_in_0_1_in_groups_and_round_trips_the_normalisation():
    from snnconv.augment import autoaugment

    x, policy = _normalized_rgb(72), _Recorder()
    out = autoaugment(x, policy, MEAN, STD, torch.Generator().manual_seed(0), group=32)
    assert [c[0] for c in policy.calls] == [32, 32, 8]
    assert all(lo >= 0 and hi <= 1 for _, lo, hi in policy.calls) and max(hi for *_, hi in policy.calls) > 0.99
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)  # an identity policy gives the images back


def test_autoaugment_changes_images_draws_from_the_generator_and_leaves_the_global_rng_alone():
    pytest.importorskip("kornia")
    from snnconv.augment import autoaugment, make_autoaugment

    x, policy = _normalized_rgb(128), make_autoaugment(3)
    rng_before = torch.get_rng_state()
    a = autoaugment(x, policy, MEAN, STD, torch.Generator().manual_seed(5))
    b = autoaugment(x, policy, MEAN, STD, torch.Generator().manual_seed(5))
    c = autoaugment(x, policy, MEAN, STD, torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = (a - x).abs().flatten(1).amax(1) > 1e-3
    assert changed.sum() >= 16  # most sub-policies change an image with probability > 0.3
    pixels = a * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_autoaugment_refuses_grey_images_and_a_missing_kornia(monkeypatch):
    import sys

    from snnconv.augment import make_autoaugment

    with pytest.raises(SnnconvError, match=r"needs RGB images; this dataset has 1 channel\(s\): drop --autoaugment"):
        make_autoaugment(1)
    monkeypatch.setitem(sys.modules, "kornia.augmentation.auto", None)  # import fails as if not installed
    with pytest.raises(SnnconvError, match=r"--autoaugment needs kornia .*pip install 'snnconv\[augment\]'"):
        make_autoaugment(3)


def test_autoaugment_off_draws_nothing_and_on_comes_after_flip_before_cutout():
    x = _normalized_rgb(8)
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain = augment_batch(x, 4, True, a, False, cutout_size=16, policy=None)
    assert torch.equal(plain, cutout(random_flip(random_crop(x, 4, b), b), 16, b))
    policy, a = _Recorder(), torch.Generator().manual_seed(3)
    with_identity = augment_batch(x, 4, True, a, False, cutout_size=16, policy=policy, normalization=(MEAN, STD))
    assert len(policy.calls) == 1
    b = torch.Generator().manual_seed(3)
    flipped = random_flip(random_crop(x, 4, b), b)
    torch.randint(0, 2**62, (1,), generator=b)  # the policy's seed
    torch.testing.assert_close(with_identity, cutout(flipped, 16, b), atol=1e-5, rtol=0)


def test_training_with_autoaugment_resumes_to_the_same_weights(tmp_path, monkeypatch):
    pytest.importorskip("kornia")
    import snnconv.train as train_module
    from snnconv.data import Dataset, load_dataset
    from snnconv.train import train

    def rgb_digits(name, split, data_dir=None):  # digits as 3-channel images: an RGB set needing no files
        d = load_dataset("digits", split)
        n = 256 if split == "train" else 64
        return Dataset("rgb_digits", d.images[:n].repeat(1, 3, 1, 1), d.labels[:n], d.num_classes, d.mean * 3, d.std * 3, True)

    monkeypatch.setattr(train_module, "load_dataset", rgb_digits)
    config = TrainConfig(model="small_cnn", dataset="digits", epochs=2, batch_size=64, seed=2, model_args={"width": 4},
                         autoaugment=True, cutout=4)
    straight, meta = train(config, tmp_path / "a", progress=False, log=lambda m: None)
    assert meta["train_config"]["autoaugment"] is True

    def stop_in_epoch_2(message):
        if message.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config.__dict__), tmp_path / "b", progress=False, log=stop_in_epoch_2)
    resumed, _ = train(TrainConfig(**config.__dict__), tmp_path / "b", progress=False, log=lambda m: None)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_autoaugment_on_grey_data_is_refused_before_anything_is_written(tmp_path):
    from snnconv.train import train

    out = tmp_path / "run"
    with pytest.raises(SnnconvError, match="needs RGB images; this dataset has 1 channel"):
        train(TrainConfig(model="small_cnn", dataset="digits", epochs=1, autoaugment=True), out, progress=False, log=lambda m: None)
    assert not (out / "checkpoint.safetensors").exists()


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_bad_autoaugment_value_is_one_clear_line(bad):
    with pytest.raises(SnnconvError, match="autoaugment must be True or False"):
        TrainConfig(autoaugment=bad).validate()

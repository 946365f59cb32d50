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


# --- AutoAugment in the training pipeline (the policy itself: tests/test_autoaugment.py) ---
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _normalized_rgb(n: int, seed: int = 0) -> torch.Tensor:
    pixels = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)).float() / 255
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_autoaugment_runs_on_pixels_after_a_black_padded_crop_and_flip_and_before_cutout():
    from snnconv.autoaugment import autoaugment_cifar10

    x = _normalized_rgb(16)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    out = augment_batch(x, 4, True, torch.Generator().manual_seed(3), False, cutout_size=8, autoaugment=True,
                        normalization=(MEAN, STD))
    g = torch.Generator().manual_seed(3)  # the authors' order, step by step, with the same draws
    pixels = random_flip(random_crop(x * std + mean, 4, g), g)
    expected = cutout((autoaugment_cifar10(pixels, g) - mean) / std, 8, g)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    plain = augment_batch(x, 4, True, torch.Generator().manual_seed(3), False, cutout_size=8)
    assert not torch.allclose(out, plain, atol=1e-3)  # the policy did act
    # the padding is black in pixels (the authors' RandomCrop), not the mean colour
    assert ((pixels == 0).all(1).flatten(1).any(1)).sum() > 0


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


def test_autoaugment_without_kornia_is_one_clear_line(monkeypatch):
    import sys

    from snnconv.autoaugment import check_autoaugment

    monkeypatch.setitem(sys.modules, "kornia.enhance", None)  # import fails as if not installed
    with pytest.raises(SnnconvError, match=r"--autoaugment needs kornia .*pip install 'snnconv\[augment\]'"):
        check_autoaugment(3)


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_bad_autoaugment_value_is_one_clear_line(bad):
    with pytest.raises(SnnconvError, match="autoaugment must be True or False"):
        TrainConfig(autoaugment=bad).validate()

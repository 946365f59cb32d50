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

"""AutoAugment's CIFAR-10 policy: each batched operation against PIL (the QCFS authors'
CIFAR10Policy runs PIL), the policy table, and the draws."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from snnconv.autoaugment import CIFAR10_POLICY, FILL, RANGES, SIGNED, _apply, autoaugment_cifar10, magnitude

pytest.importorskip("kornia")


def _images(n=6, seed=0):
    """Smooth-ish random RGB images (uint8 [n, 32, 32, 3]) with varied ranges per channel."""
    g = np.random.default_rng(seed)
    base = g.integers(0, 256, (n, 8, 8, 3)).repeat(4, 1).repeat(4, 2)
    noise = g.integers(-20, 21, (n, 32, 32, 3))
    return np.clip(base * g.uniform(0.3, 1, (n, 1, 1, 3)) + noise, 0, 255).astype(np.uint8)


def _pil(img, operation, m):
    """The authors' PIL operation with signed magnitude m (rotate: m degrees counter-clockwise)."""
    fill = (128, 128, 128)
    size = img.size
    if operation == "shear_x":
        return img.transform(size, Image.AFFINE, (1, m, 0, 0, 1, 0), Image.BICUBIC, fillcolor=fill)
    if operation == "shear_y":
        return img.transform(size, Image.AFFINE, (1, 0, 0, m, 1, 0), Image.BICUBIC, fillcolor=fill)
    if operation == "translate_x":
        return img.transform(size, Image.AFFINE, (1, 0, m * size[0], 0, 1, 0), fillcolor=fill)
    if operation == "translate_y":
        return img.transform(size, Image.AFFINE, (1, 0, 0, 0, 1, m * size[1]), fillcolor=fill)
    if operation == "rotate":
        rot = img.convert("RGBA").rotate(m)
        return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(img.mode)
    enhance = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness,
               "brightness": ImageEnhance.Brightness}
    if operation in enhance:
        return enhance[operation](img).enhance(1 + m)
    if operation == "posterize":
        return ImageOps.posterize(img, int(m))
    if operation == "solarize":
        return ImageOps.solarize(img, m)
    return {"autocontrast": ImageOps.autocontrast, "equalize": ImageOps.equalize, "invert": ImageOps.invert}[operation](img)


def _hard_images():
    """Images that reach the edge cases: flat (autocontrast's hi == lo, equalize's single level),
    black, white, two levels (autocontrast's 100..200 stretch, where PIL's double table gives 254
    for 200), one level apart, pure noise (bicubic overshoot, sharpening), a ramp over all levels,
    bright edges (rotate / shear borders)."""
    g = np.random.default_rng(7)
    flat = np.broadcast_to(np.array([17, 128, 250], np.uint8), (32, 32, 3))
    two = np.full((32, 32, 3), 100, np.uint8)
    two[:16] = 200
    near = np.full((32, 32, 3), 3, np.uint8)
    near[::2] = 4
    ramp = np.arange(32 * 32).reshape(32, 32) % 256
    edges = np.zeros((32, 32, 3), np.uint8)
    edges[0], edges[-1], edges[:, 0], edges[:, -1] = 255, 200, 50, 150
    return np.stack([flat, np.zeros_like(flat), np.full_like(flat, 255), two, near, g.integers(0, 256, (32, 32, 3)),
                     np.stack([ramp, 255 - ramp, ramp * 7 % 256], -1), g.integers(120, 136, (32, 32, 3)), edges]).astype(np.uint8)


CASES = [(o, b, sign) for o in RANGES for b in range(10) for sign in ((1.0, -1.0) if o in SIGNED else (1.0,))]


@pytest.mark.parametrize("operation,bin_,sign", CASES)
def test_each_operation_at_every_bin_equals_pil(operation, bin_, sign):
    images = np.concatenate([_images(), _hard_images()])
    m = magnitude(operation, bin_) * sign
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    ours = (_apply(x, operation, torch.full((len(images),), m, dtype=torch.float64)).clamp(0, 1) * 255).round()
    theirs = torch.from_numpy(np.stack([np.array(_pil(Image.fromarray(i), operation, m)) for i in images])).permute(0, 3, 1, 2).float()
    diff = (ours - theirs).abs()
    assert diff.max() == 0, (diff.max(), (diff > 0).float().mean())


def test_the_table_is_the_papers_cifar10_policy_with_the_authors_magnitudes():
    assert len(CIFAR10_POLICY) == 25
    assert CIFAR10_POLICY[1] == (0.7, "rotate", 2, 0.3, "translate_x", 9)
    assert magnitude("rotate", 2) == pytest.approx(30 * 2 / 9)  # 6.67 degrees (kornia: 12 to 18)
    assert magnitude("shear_y", 8) == pytest.approx(0.3 * 8 / 9)  # 0.27 (kornia: 0.64 to 0.83)
    assert magnitude("posterize", 7) == 5 and magnitude("solarize", 2) == pytest.approx(256 * 7 / 9)
    assert magnitude("translate_y", 9) == pytest.approx(150 / 331)
    for operation, (lo, hi) in RANGES.items():  # the authors' np.linspace values, bit for bit
        expected = np.round(np.linspace(lo, hi, 10)) if operation == "posterize" else np.linspace(lo, hi, 10)
        assert [magnitude(operation, b) for b in range(10)] == expected.tolist(), operation


def test_every_image_draws_its_own_sub_policy_from_the_generator():
    x = torch.from_numpy(_images(256, seed=1)).permute(0, 3, 1, 2).float() / 255
    rng_before = torch.get_rng_state()
    a = autoaugment_cifar10(x, torch.Generator().manual_seed(0))
    b = autoaugment_cifar10(x, torch.Generator().manual_seed(0))
    c = autoaugment_cifar10(x, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), rng_before) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal((a * 255).round(), a * 255)  # on the 8-bit grid
    changed = (a - x).abs().flatten(1).amax(1) > 0
    # P(no change) averaged over the 25 sub-policies is 0.26 (product of 1 - p per slot; an
    # operation may also leave an image as it is): about 190 of 256 images change.
    assert 150 <= int(changed.sum()) <= 230
    greys = ((a - FILL).abs() < 1e-6).all(1).flatten(1).float().mean(1)  # geometric ops leave grey corners
    assert 20 <= int((greys > 0.05).sum()) <= 120


def test_sub_policy_draws_follow_the_table():
    torch.manual_seed(0)
    x = torch.full((2000, 3, 32, 32), 100 / 255)
    x[:, :, :16] = 200 / 255  # a flat two-tone image: invert and solarize are easy to see
    out = autoaugment_cifar10(x, torch.Generator().manual_seed(3))
    inverted = ((out[:, 0, 0, 0] * 255).round() == 55) & ((out[:, 0, 31, 0] * 255).round() == 155)
    # invert is slot 1 of sub-policy 0 (p 0.1), slot 2 of 23 (0.1) and 14 (0.0): P = (0.1 + 0.1 * 0.2 ...) / 25
    assert 2 <= int(inverted.sum()) <= 30


def test_the_batched_policy_equals_the_authors_sub_policies_image_by_image():
    """The same draws (sub-policy, then per slot apply and sign) through PIL image by image give
    the batch's result exactly."""
    images = np.concatenate([_images(40, seed=2), _hard_images()] * 4)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    out = (autoaugment_cifar10(x, torch.Generator().manual_seed(11)) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    g = torch.Generator().manual_seed(11)
    choice = torch.randint(0, 25, (len(images),), generator=g).tolist()
    draws = [(torch.rand(len(images), generator=g).tolist(), torch.rand(len(images), generator=g).tolist()) for _ in range(2)]
    applied = 0
    for i, image in enumerate(images):
        img, row = Image.fromarray(image), CIFAR10_POLICY[choice[i]]
        for slot in (0, 1):
            p, operation, bin_ = row[3 * slot:3 * slot + 3]
            if draws[slot][0][i] < np.float32(p):
                sign = -1.0 if operation in SIGNED and draws[slot][1][i] < 0.5 else 1.0
                img, applied = _pil(img, operation, magnitude(operation, bin_) * sign), applied + 1
        assert np.array_equal(np.array(img), out[i]), (i, row)
    assert 150 <= applied <= 300  # 196 images, 2 slots, mean p 0.52

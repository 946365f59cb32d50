"""AutoAugment's CIFAR-10 policy as batched tensor ops, one sub-policy draw per image.

Cubuk, Zoph, Mane, Vasudevan, Le, "AutoAugment: Learning Augmentation Strategies from
Data", CVPR 2019: 25 sub-policies, each two operations ``(probability, operation,
magnitude bin 0..9)``; every image draws one sub-policy, then applies each of its two
operations with its probability. The magnitudes, signs and fill are those of the
``CIFAR10Policy`` the QCFS authors train with (their ``Preprocess/augment.py``, after
the widely used PIL implementation): shear 0..0.3, translate 0..150/331 of the image
size, rotate 0..30 degrees (counter-clockwise only, as theirs), colour / contrast /
sharpness / brightness factor 1 ± 0..0.9, posterize 8..4 bits, solarize threshold
256..0, grey (128) fill; shear, translate and the enhancements take a random sign.
kornia's own ``AutoAugment("cifar10")`` maps the bins to other ranges (e.g. shear bin 8
to 0.64..0.83) and draws one sub-policy per call, so it is not used. Each operation
computes what PIL computes on the 8-bit levels (its bicubic of a = -1, fixed-point rotate,
float32 blends, truncations); ``tests/test_autoaugment.py`` checks every operation at every
bin and sign, and whole batches, equal to PIL bit for bit.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .errors import SnnconvError

# (p1, operation1, bin1, p2, operation2, bin2): the paper's CIFAR-10 policy (Appendix, Table 8).
CIFAR10_POLICY = (
    (0.1, "invert", 7, 0.2, "contrast", 6), (0.7, "rotate", 2, 0.3, "translate_x", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3), (0.5, "shear_y", 8, 0.7, "translate_y", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2), (0.2, "shear_y", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7), (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1), (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translate_x", 8), (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translate_y", 3, 0.2, "sharpness", 6), (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3), (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.8, "equalize", 4), (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8), (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3), (0.9, "translate_y", 9, 0.7, "translate_y", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3), (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translate_y", 9, 0.9, "autocontrast", 1),
)
# Magnitude of bin 0 and bin 9 (linear in between); posterize's bits are rounded.
RANGES = {"shear_x": (0.0, 0.3), "shear_y": (0.0, 0.3), "translate_x": (0.0, 150 / 331), "translate_y": (0.0, 150 / 331),
          "rotate": (0.0, 30.0), "color": (0.0, 0.9), "contrast": (0.0, 0.9), "sharpness": (0.0, 0.9),
          "brightness": (0.0, 0.9), "posterize": (8.0, 4.0), "solarize": (256.0, 0.0),
          "autocontrast": (0.0, 0.0), "equalize": (0.0, 0.0), "invert": (0.0, 0.0)}
FILL = 128 / 255  # the value geometric operations give pixels from outside the image
GREY = (19595, 38470, 7471)  # PIL's RGB -> L weights, in 1/65536


def magnitude(operation: str, bin_: int) -> float:
    """The magnitude of ``operation`` at ``bin_`` (0..9): ``lo + (hi - lo) * bin / 9``, as the authors'
    ``np.linspace(lo, hi, 10)[bin]`` (bit for bit: the formula differs in the last bit for 20 of the 140)."""
    lo, hi = RANGES[operation]
    value = float(np.linspace(lo, hi, 10)[bin_])
    return float(round(value)) if operation == "posterize" else value


def check_autoaugment(channels: int) -> None:
    """Raises:
        SnnconvError: the images are not RGB (colour operations need 3 channels), or
            kornia (equalize) is not installed.
    """
    if channels != 3:
        raise SnnconvError(f"AutoAugment's CIFAR-10 policy needs RGB images; this dataset has {channels} channel(s): "
                           "drop --autoaugment")
    try:
        import kornia.enhance  # noqa: F401
    except ImportError as error:
        raise SnnconvError(f"--autoaugment needs kornia ({error}): pip install 'snnconv[augment]' (or pip install kornia)") from None


def _levels(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit levels 0..255 of pixels ``x`` in [0, 1], as int32."""
    return (x * 255).round().to(torch.int32)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")`` of ``[B, 3, H, W]`` pixels: ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``
    on the 8-bit levels, as int32 levels ``[B, 1, H, W]``."""
    weights = torch.tensor(GREY, dtype=torch.int32, device=x.device).view(1, 3, 1, 1)
    return ((_levels(x) * weights).sum(1, keepdim=True, dtype=torch.int32) + 32768) >> 16


def _nearest(x: torch.Tensor, column: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """Output pixel (v, u) of ``[n, C, H, W]`` takes source pixel (``row``, ``column``) (int64 ``[n, H, W]``),
    or the grey fill where that is outside the image."""
    n, channels, height, width = x.shape
    inside = ((column >= 0) & (column < width) & (row >= 0) & (row < height))[:, None]
    index = (row.clamp(0, height - 1) * width + column.clamp(0, width - 1)).view(n, 1, -1).expand(n, channels, -1)
    return torch.where(inside, x.flatten(2).gather(2, index).view_as(x), torch.full_like(x, FILL))


def _rotation_fixed(degrees: float, width: int, height: int) -> list[int]:
    """PIL's ``rotate(degrees)`` (NEAREST, no expand) as the 16.16 fixed-point affine map its
    ``affine_fixed`` samples with: ``[a0, a1, a2, a3, a4, a5]``, source (x, y) of output (u, v)
    = ((a0 u + a1 v + a2) >> 16, (a3 u + a4 v + a5) >> 16); the matrix exactly as ``Image.rotate``."""
    angle = -math.radians(degrees % 360.0)
    cx, cy = width / 2, height / 2
    a, b, d, e = round(math.cos(angle), 15), round(math.sin(angle), 15), round(-math.sin(angle), 15), round(math.cos(angle), 15)
    c, f = a * -cx + b * -cy + 0.0 + cx, d * -cx + e * -cy + 0.0 + cy

    def fix(v: float) -> int:
        return math.floor(v * 65536.0 + 0.5)
    return [fix(a), fix(b), fix(c + a * 0.5 + b * 0.5), fix(d), fix(e), fix(f + d * 0.5 + e * 0.5)]


def _cubic(v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, v4: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """PIL's transform cubic through taps at -1, 0, 1, 2 at offset ``d`` (Keys' kernel with a = -1, not torch's -0.75)."""
    return v2 + d * ((v3 - v1) + d * ((2 * (v1 - v2) + v3 - v4) + d * ((v2 - v1) - v3 + v4)))


def _bicubic_pil(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.transform(AFFINE, BICUBIC)`` of ``[n, C, H, W]`` pixels in [0, 1] by ``matrix`` ``[n, 2, 3]``.

    Output pixel (u, v) reads the source point ``matrix @ (u + 1/2, v + 1/2, 1)`` (pixel units);
    one outside [0, W) x [0, H) gets the grey fill, one inside the separable cubic of a = -1
    (PIL's ``BICUBIC`` macro) over the 4 x 4 taps around it, edge pixels repeated, computed in
    float64 and truncated to 8 bits as PIL's ``bicubic_filter32RGB`` does.
    """
    n, channels, height, width = x.shape
    a = matrix.to(torch.float64)
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=x.device) + 0.5,
                          torch.arange(width, dtype=torch.float64, device=x.device) + 0.5, indexing="ij")
    xin = a[:, 0, 0, None, None] * u + a[:, 0, 1, None, None] * v + a[:, 0, 2, None, None]  # [n, H, W]
    yin = a[:, 1, 0, None, None] * u + a[:, 1, 1, None, None] * v + a[:, 1, 2, None, None]
    inside = ((xin >= 0) & (xin < width) & (yin >= 0) & (yin < height))[:, None]  # [n, 1, H, W]
    x0, y0 = torch.floor(xin - 0.5), torch.floor(yin - 0.5)
    dx, dy = (xin - 0.5 - x0)[:, None], (yin - 0.5 - y0)[:, None]
    taps = torch.arange(-1, 3, device=x.device)
    cols = (x0.long()[..., None] + taps).clamp(0, width - 1)  # [n, H, W, 4]
    rows = (y0.long()[..., None] + taps).clamp(0, height - 1)
    index = (rows[..., :, None] * width + cols[..., None, :]).view(n, 1, -1).expand(n, channels, -1)
    levels = (x.to(torch.float64) * 255).round().flatten(2).gather(2, index).view(n, channels, height, width, 4, 4)
    across = _cubic(*levels.unbind(-1), dx[..., None])  # [n, C, H, W, 4]: each tap row at dx
    value = _cubic(*across.unbind(-1), dy).clamp(0, 255).trunc()
    return torch.where(inside, value.to(x.dtype) / 255, torch.full_like(x, FILL))


def _geometric(x: torch.Tensor, operation: str, m: torch.Tensor) -> torch.Tensor:
    """Shear (PIL's bicubic), translate and rotate (nearest, PIL's default) by ``m`` (float64 ``[n]``, on the CPU) per image."""
    batch, _, height, width = x.shape
    if operation.startswith("shear"):
        one, zero, m = torch.ones_like(m), torch.zeros_like(m), m.to(x.device)
        one, zero = one.to(x.device), zero.to(x.device)
        rows = [one, m, zero, zero, one, zero] if operation == "shear_x" else [one, zero, zero, m, one, zero]
        return _bicubic_pil(x, torch.stack(rows, 1).view(batch, 2, 3))
    v = torch.arange(height, device=x.device).view(1, -1, 1).expand(batch, height, width)
    u = torch.arange(width, device=x.device).view(1, 1, -1).expand(batch, height, width)
    if operation == "rotate":  # PIL's rotate: counter-clockwise about the centre, fixed-point nearest
        maps = {value: _rotation_fixed(value, width, height) for value in m.unique().tolist()}
        a = torch.tensor([maps[value] for value in m.tolist()], dtype=torch.int64).to(x.device).view(batch, 6, 1, 1)
        column = torch.div(a[:, 0] * u + a[:, 1] * v + a[:, 2], 65536, rounding_mode="floor")
        row = torch.div(a[:, 3] * u + a[:, 4] * v + a[:, 5], 65536, rounding_mode="floor")
        return _nearest(x, column, row)
    # PIL's translate (ImagingScaleAffine): source pixel floor(output + 1/2 + shift), in double
    shift = (m * (width if operation == "translate_x" else height)).to(x.device).view(-1, 1, 1)
    if operation == "translate_x":
        return _nearest(x, torch.floor(u + 0.5 + shift).long(), v)
    return _nearest(x, u, torch.floor(v + 0.5 + shift).long())


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance``, ``Image.blend(degenerate, x, factor)``: ``d + factor * (i - d)`` on the
    8-bit levels d (int32 ``degenerate``) and i (of pixels ``x``) in float32 with the factor
    cast to float32, truncated and clipped to 0..255 as PIL's ``ImagingBlend``; pixels in [0, 1]."""
    d = degenerate.to(torch.float32)
    alpha = factor.to(torch.float32).view(-1, 1, 1, 1)
    value = d + alpha * (_levels(x).to(torch.float32) - d)
    return value.clamp(0, 255).trunc().to(x.dtype) / 255


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``filter(ImageFilter.SMOOTH)`` of pixels ``x``: the 3 x 3 kernel (1 1 1 / 1 5 1 / 1 1 1) / 13
    in float32, summed as PIL's ``ImagingFilter3x3`` (1/2 + row below + row + row above, each
    left to right) and truncated; border pixels kept. int32 levels."""
    levels = _levels(x).to(torch.float32)
    w1, w5 = torch.tensor(1 / 13, dtype=torch.float32), torch.tensor(5 / 13, dtype=torch.float32)
    height, width = x.shape[2:]

    def row(r: int) -> torch.Tensor:  # kernel row (w1, w, w1) on rows r .. r + H - 3, left to right
        band = levels[:, :, r:r + height - 2]
        w = w5 if r == 1 else w1
        return w1 * band[..., :-2] + w * band[..., 1:-1] + w1 * band[..., 2:]

    total = torch.tensor(0.5, dtype=torch.float32) + row(2)
    total = total + row(1)
    total = total + row(0)
    out = _levels(x).clone()
    out[:, :, 1:-1, 1:-1] = total.clamp(0, 255).trunc().to(torch.int32)
    return out


def _apply(x: torch.Tensor, operation: str, m: torch.Tensor) -> torch.Tensor:
    """One operation on ``[n, 3, H, W]`` pixels in [0, 1] (on the 8-bit grid) with signed magnitudes
    ``m`` (float64 ``[n]`` on the CPU, as PIL's double magnitudes); each as PIL computes it."""
    import kornia.enhance

    if operation in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        return _geometric(x, operation, m)
    m = m.to(x.device, torch.float64)
    factor = 1 + m  # PIL: 1 + magnitude in double, cast to float by the blend
    if operation == "color":
        return _blend(_grey(x), x, factor)
    if operation == "contrast":  # PIL blends with int(mean of L + 0.5), the mean in double
        mean = torch.floor(_grey(x).to(torch.float64).mean((1, 2, 3), keepdim=True) + 0.5)
        return _blend(mean, x, factor)
    if operation == "brightness":
        return _blend(torch.zeros_like(x, dtype=torch.int32), x, factor)
    if operation == "sharpness":  # PIL: blend with the SMOOTH-filtered image, whose border pixels stay as they are
        return _blend(_smooth(x), x, factor)
    if operation == "posterize":  # keep the top m bits of each 8-bit value
        drop = (8 - m).round().to(torch.int32).view(-1, 1, 1, 1)
        return ((_levels(x) >> drop) << drop).to(x.dtype) / 255
    if operation == "solarize":  # invert the levels at or above the threshold m (0..256)
        return torch.where(_levels(x) < m.view(-1, 1, 1, 1), x, 1 - x)
    if operation == "autocontrast":  # stretch each channel's min..max to 0..255: PIL's table, in double
        levels = _levels(x).to(torch.float64)
        lo, hi = levels.amin((2, 3), keepdim=True), levels.amax((2, 3), keepdim=True)
        scale = torch.full_like(lo, 255.0) / (hi - lo).clamp_min(1)  # (255.0 / t is 255 * (1 / t), not PIL's quotient)
        stretched = (levels * scale + -lo * scale).trunc().clamp(0, 255)
        return torch.where(hi > lo, stretched, levels).to(x.dtype) / 255
    if operation == "equalize":
        return kornia.enhance.equalize(x)
    if operation == "invert":
        return 1 - x
    raise ValueError(operation)


SIGNED = ("shear_x", "shear_y", "translate_x", "translate_y", "color", "contrast", "sharpness", "brightness")
OPERATIONS = tuple(RANGES)


@functools.lru_cache(maxsize=None)
def _table(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, operation indices and magnitudes of the policy, each ``[25, 2]`` (built once; read only)."""
    rows = [((p1, o1, b1), (p2, o2, b2)) for p1, o1, b1, p2, o2, b2 in CIFAR10_POLICY]
    prob = torch.tensor([[p for p, _, _ in r] for r in rows], device=device)
    op = torch.tensor([[OPERATIONS.index(o) for _, o, _ in r] for r in rows], device=device)
    mag = torch.tensor([[magnitude(o, b) for _, o, b in r] for r in rows], dtype=torch.float64, device=device)
    return prob, op, mag


def autoaugment_cifar10(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """AutoAugment's CIFAR-10 policy on ``[B, 3, H, W]`` pixels in [0, 1] (float32).

    Per image: a sub-policy s ~ U{0..24}; for its two slots k in order, with probability
    p[s, k] apply operation o[s, k] with magnitude m[s, k] (times a random sign for the
    signed operations), rounding the result to 8 bits. All draws come from ``generator``
    (three per image and slot order: sub-policy, then per slot apply and sign), so a
    resumed run draws what an uninterrupted one would. Each operation runs once per slot
    on the images that apply it: no per-image Python work.
    """
    batch = pixels.shape[0]
    prob, op, mag = _table(torch.device("cpu"))
    choice = torch.randint(0, len(CIFAR10_POLICY), (batch,), generator=generator)
    out = (pixels * 255).round() / 255  # back on the 8-bit grid after float normalisation
    for slot in (0, 1):
        apply = torch.rand(batch, generator=generator) < prob[choice, slot]
        sign = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
        for index, operation in enumerate(OPERATIONS):
            rows = torch.nonzero(apply & (op[choice, slot] == index)).flatten()
            if len(rows) == 0:
                continue
            m = mag[choice[rows], slot] * (sign[rows] if operation in SIGNED else 1.0)
            rows_d = rows.to(pixels.device)
            result = _apply(out[rows_d], operation, m)
            out[rows_d] = (result.clamp(0, 1) * 255).round() / 255
    return out

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
to 0.64..0.83) and draws one sub-policy per call, so it is not used. Each operation's
result is rounded to 8 bits, as PIL's uint8 images are; each is tested against PIL in
``tests/test_autoaugment.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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
GREY = (0.299, 0.587, 0.114)  # PIL's RGB -> L weights


def magnitude(operation: str, bin_: int) -> float:
    """The magnitude of ``operation`` at ``bin_`` (0..9): ``lo + (hi - lo) * bin / 9``."""
    lo, hi = RANGES[operation]
    value = lo + (hi - lo) * bin_ / 9
    return float(round(value)) if operation == "posterize" else value


def check_autoaugment(channels: int) -> None:
    """Raises:
        SnnconvError: the images are not RGB (colour operations need 3 channels), or
            kornia (equalize and sharpness) is not installed.
    """
    if channels != 3:
        raise SnnconvError(f"AutoAugment's CIFAR-10 policy needs RGB images; this dataset has {channels} channel(s): "
                           "drop --autoaugment")
    try:
        import kornia.enhance  # noqa: F401
    except ImportError as error:
        raise SnnconvError(f"--autoaugment needs kornia ({error}): pip install 'snnconv[augment]' (or pip install kornia)") from None


def _grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's L channel of ``[B, 3, H, W]`` in [0, 1], rounded to 8 bits: ``[B, 1, H, W]``."""
    weights = torch.tensor(GREY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x * weights).sum(1, keepdim=True) * 255).round() / 255


def _affine(x: torch.Tensor, matrix: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample ``x`` at ``matrix @ (u, v, 1)`` for each output pixel (pixel units, pixel i
    spanning [i, i + 1), as PIL's ``Image.transform``), grey outside the image."""
    batch, _, height, width = x.shape
    to_unit = torch.tensor([[2 / width, 0, -1], [0, 2 / height, -1], [0, 0, 1]], dtype=x.dtype, device=x.device)
    full = torch.cat([matrix, torch.tensor([[[0, 0, 1]]], dtype=x.dtype, device=x.device).expand(batch, 1, 3)], 1)
    theta = (to_unit @ full @ torch.linalg.inv(to_unit))[:, :2]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # As PIL: a source point outside the image gives the fill; one inside samples the image
    # with its edge pixels repeated (a bicubic tap past the edge does not see the fill).
    sampled = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    inside = ((grid >= -1) & (grid < 1)).all(-1, keepdim=True).permute(0, 3, 1, 2)  # [B, 1, H, W]
    return torch.where(inside, sampled, torch.full_like(sampled, FILL))


def _geometric(x: torch.Tensor, operation: str, m: torch.Tensor) -> torch.Tensor:
    """Shear (bicubic, as PIL's policy), translate and rotate (nearest, PIL's default) by ``m`` per image."""
    batch, _, height, width = x.shape
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    if operation == "rotate":  # PIL's rotate: counter-clockwise about the centre
        a = torch.deg2rad(-m)
        cx, cy = width / 2, height / 2
        rows = [torch.cos(a), torch.sin(a), cx - cx * torch.cos(a) - cy * torch.sin(a),
                -torch.sin(a), torch.cos(a), cy + cx * torch.sin(a) - cy * torch.cos(a)]
    else:
        rows = {"shear_x": [one, m, zero, zero, one, zero], "shear_y": [one, zero, zero, m, one, zero],
                "translate_x": [one, zero, m * width, zero, one, zero],
                "translate_y": [one, zero, zero, zero, one, m * height]}[operation]
    matrix = torch.stack(rows, 1).view(batch, 2, 3)
    if operation.startswith("shear"):
        return _affine(x, matrix, "bicubic")
    # PIL's nearest takes floor(coordinate); grid_sample rounds (coordinate - 1/2), half to
    # even: a shift of 1e-3 pixel makes both pick the same pixel at the ties (half-pixel shifts).
    return _affine(x, matrix + torch.tensor([[0, 0, 1e-3], [0, 0, 1e-3]], dtype=x.dtype, device=x.device), "nearest")


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance``: ``degenerate + factor * (x - degenerate)``, truncated to 8 bits as PIL's blend does."""
    return ((degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)) * 255 + 1e-3).floor() / 255


def _apply(x: torch.Tensor, operation: str, m: torch.Tensor) -> torch.Tensor:
    """One operation on ``[n, 3, H, W]`` pixels in [0, 1] with signed magnitudes ``m`` ``[n]``."""
    import kornia.enhance

    if operation in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        return _geometric(x, operation, m)
    if operation == "color":
        return _blend(_grey(x), x, 1 + m)
    if operation == "contrast":  # PIL blends with the mean of L, rounded to an integer level
        mean = (_grey(x).mean((1, 2, 3), keepdim=True) * 255 + 0.5).floor() / 255
        return _blend(mean, x, 1 + m)
    if operation == "brightness":
        return _blend(torch.zeros_like(x), x, 1 + m)
    if operation == "sharpness":  # PIL: blend with the SMOOTH-filtered image, whose border pixels stay as they are
        kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
        smooth = F.conv2d(x.reshape(-1, 1, *x.shape[2:]), kernel.view(1, 1, 3, 3)).view(*x.shape[:2], x.shape[2] - 2, x.shape[3] - 2)
        degenerate = x.clone()
        degenerate[:, :, 1:-1, 1:-1] = (smooth * 255).round() / 255
        return _blend(degenerate, x, 1 + m)
    if operation == "posterize":  # keep the top m bits of each 8-bit value
        drop = (2 ** (8 - m)).view(-1, 1, 1, 1)
        return torch.div(x * 255, drop, rounding_mode="floor") * drop / 255
    if operation == "solarize":  # invert the values at or above the threshold m (0..256)
        return torch.where((x * 255).round() < m.view(-1, 1, 1, 1), x, 1 - x)
    if operation == "autocontrast":  # stretch each channel's min..max to 0..255, truncating as PIL's table does
        lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
        stretched = ((x - lo) * 255 / (hi - lo).clamp_min(1e-12) + 1e-3).floor() / 255
        return torch.where(hi > lo, stretched, x)
    if operation == "equalize":
        return kornia.enhance.equalize(x)
    if operation == "invert":
        return 1 - x
    raise ValueError(operation)


SIGNED = ("shear_x", "shear_y", "translate_x", "translate_y", "color", "contrast", "sharpness", "brightness")
OPERATIONS = tuple(RANGES)


def _table(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, operation indices and magnitudes of the policy, each ``[25, 2]``."""
    rows = [((p1, o1, b1), (p2, o2, b2)) for p1, o1, b1, p2, o2, b2 in CIFAR10_POLICY]
    prob = torch.tensor([[p for p, _, _ in r] for r in rows], device=device)
    op = torch.tensor([[OPERATIONS.index(o) for _, o, _ in r] for r in rows], device=device)
    mag = torch.tensor([[magnitude(o, b) for _, o, b in r] for r in rows], device=device)
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
            result = _apply(out[rows_d], operation, m.to(pixels.device, pixels.dtype))
            out[rows_d] = (result.clamp(0, 1) * 255).round() / 255
    return out

"""Batched augmentation as tensor ops: no per-image Python work."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import SnnconvError


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` by ``padding`` (zeros) and crop each image at a random offset."""
    if padding <= 0:
        return x
    batch, _, height, width = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(height, device=x.device))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, :]  # [B, 1, W]
    # One gather for the whole batch: [B, H, W, C] -> back to [B, C, H, W].
    return padded.permute(0, 2, 3, 1)[torch.arange(batch, device=x.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of ``[B, C, H, W]`` horizontally with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square of each image of ``[B, C, H, W]``.

    The square covers rows ``[cy - size // 2, cy + size // 2)`` and the same columns around a
    centre ``(cy, cx)`` drawn uniformly over the image, clipped at the border, so it may be
    partly outside (DeVries & Taylor, "Improved Regularization of Convolutional Neural
    Networks with Cutout", 2017). Applied to normalised images, as the QCFS authors' CIFAR
    loader does (size 16). One mask for the batch, no per-image Python work.
    """
    if size <= 0:
        return x
    batch, _, height, width = x.shape
    cy = torch.randint(0, height, (batch, 1), generator=generator).to(x.device)
    cx = torch.randint(0, width, (batch, 1), generator=generator).to(x.device)
    rows, cols = torch.arange(height, device=x.device), torch.arange(width, device=x.device)
    in_rows = (rows >= cy - size // 2) & (rows < cy + size // 2)  # [B, H]
    in_cols = (cols >= cx - size // 2) & (cols < cx + size // 2)  # [B, W]
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # [B, H, W]
    return x * keep[:, None].to(x.dtype)


# Images that share one AutoAugment sub-policy draw. kornia draws one of the policy's 25
# sub-policies per call; torchvision (the QCFS authors' loader) draws one per image. A
# call per image cost 147 ms per batch of 128 on one core against 45 ms for groups of 32
# (a ResNet-20 bf16 step is about 160 ms), so a batch of 128 sees 4 sub-policies; each
# operation's probability and magnitude are still drawn per image.
AUTOAUGMENT_GROUP = 32


def make_autoaugment(channels: int) -> torch.nn.Module:
    """AutoAugment's CIFAR-10 policy (Cubuk et al., "AutoAugment: Learning Augmentation
    Strategies from Data", CVPR 2019), as kornia implements it, for ``channels``-channel images.

    kornia's magnitudes are not the QCFS authors' loader's (``CIFAR10Policy``: fixed magnitudes
    ``linspace(0, max, 10)[bin]``, random sign for shear, translate and the colour factors
    ``1 +- m``, grey fill 128). kornia maps a bin onto an interval of a signed scale with no
    random sign: ``rotate`` bin 2 turns 12-18 degrees (the loader: 6.7), ``shear_y`` bin 8
    shears by 0.64-0.83 one way (the loader: +-0.27), ``translate_*`` shift one way,
    ``solarize`` thresholds rise with the bin (the loader's fall), ``posterize`` bin 7 keeps 7
    bits (the loader: 5), colour factors only brighten/sharpen for bins >= 5; the fill is black.

    Raises:
        SnnconvError: kornia is not installed (``pip install kornia``), or the images are
            not RGB (the policy's colour operations need 3 channels).
    """
    if channels != 3:
        raise SnnconvError(f"AutoAugment's CIFAR-10 policy needs RGB images; this dataset has {channels} channel(s): "
                           "drop --autoaugment")
    try:
        from kornia.augmentation.auto import AutoAugment
    except ImportError as error:
        raise SnnconvError(f"--autoaugment needs kornia ({error}): pip install 'snnconv[augment]' "
                           "(or pip install kornia)") from None
    return AutoAugment(policy="cifar10")


def autoaugment(x: torch.Tensor, policy: torch.nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                generator: torch.Generator, group: int = AUTOAUGMENT_GROUP) -> torch.Tensor:
    """Apply ``policy`` (see :func:`make_autoaugment`) to normalised images ``[B, C, H, W]``.

    The policy works on pixel values in [0, 1]: each image is mapped back with
    ``x * std + mean``, augmented, and normalised again, ``(x' - mean) / std``. One policy
    call per ``group`` images (see ``AUTOAUGMENT_GROUP``). kornia draws from the global RNG;
    here it draws inside ``torch.random.fork_rng`` from a seed taken from ``generator``, so
    the global RNG is untouched and a resumed run draws what an uninterrupted one would.
    """
    mean_ = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std_ = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    pixels = (x * std_ + mean_).clamp_(0, 1)  # float rounding may step just outside [0, 1]
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        pixels = torch.cat([policy(chunk) for chunk in pixels.split(group)])
    return (pixels - mean_) / std_

"""Batched augmentation as tensor ops: no per-image Python work."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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

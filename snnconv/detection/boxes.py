"""Box geometry, decoding of the raw head output, and per-class NMS (torch only).

Boxes are ``(x1, y1, x2, y2)`` in input pixels, continuous coordinates (a box covering
pixel columns 0..9 is x1 = 0, x2 = 10), as the COCO evaluator measures them.
"""
from __future__ import annotations

import torch

from ..errors import check
from .model import BOX_CHANNELS, CLS_START, OBJ_CHANNEL

# exp() of a raw size above this would overflow float32 box sizes for no gain: no object
# is e^8 (~3000) cells wide.
_MAX_LOG_SIZE = 8.0


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of boxes ``[..., 4]`` (degenerate boxes have area 0): ``[...]``.

    Raises:
        Nothing.
    """
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``a [..., N, 4]`` and ``b [..., M, 4]``: ``[..., N, M]``.

    Raises:
        Nothing.
    """
    top_left = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise GIoU of matching boxes ``a, b [..., 4]``: ``[...]`` in [-1, 1].

    Raises:
        Nothing.
    """
    top_left = torch.maximum(a[..., :2], b[..., :2])
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    eps = torch.finfo(a.dtype).eps
    iou = inter / (union + eps)
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / (hull + eps)


def cell_grid(height: int, width: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row index of every cell: two ``[H, W]`` tensors.

    Raises:
        Nothing.
    """
    rows = torch.arange(height, device=device, dtype=dtype)
    cols = torch.arange(width, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
    return grid_x, grid_y


def decode_boxes(box_raw: torch.Tensor, stride: int) -> torch.Tensor:
    """Raw box channels ``[B, 4, H, W]`` -> boxes ``[B, H, W, 4]`` (x1, y1, x2, y2) in pixels.

    centre = (cell + sigmoid(t_xy)) * stride, size = stride * exp(t_wh).

    Raises:
        Nothing.
    """
    grid_x, grid_y = cell_grid(box_raw.shape[2], box_raw.shape[3], box_raw.device, box_raw.dtype)
    cx = (grid_x + box_raw[:, 0].sigmoid()) * stride
    cy = (grid_y + box_raw[:, 1].sigmoid()) * stride
    w = stride * box_raw[:, 2].clamp(max=_MAX_LOG_SIZE).exp()
    h = stride * box_raw[:, 3].clamp(max=_MAX_LOG_SIZE).exp()
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def decode(raw: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw head output ``[B, 5 + C, H, W]`` -> per cell (boxes ``[B, H*W, 4]``,
    scores ``[B, H*W]``, labels ``[B, H*W]``).

    Each cell proposes its most likely class; score = sigmoid(objectness) * softmax(class).

    Raises:
        SnnconvError: ``raw`` is not ``[batch, 5 + C, H, W]``.
    """
    check(raw.dim() == 4 and raw.shape[1] > CLS_START, f"raw head output must be [batch, 5 + C, H, W], got {tuple(raw.shape)}")
    batch = raw.shape[0]
    boxes = decode_boxes(raw[:, BOX_CHANNELS], stride).reshape(batch, -1, 4)
    objectness = raw[:, OBJ_CHANNEL].sigmoid().reshape(batch, -1)
    class_prob, labels = raw[:, CLS_START:].softmax(1).max(1)
    return boxes, objectness * class_prob.reshape(batch, -1), labels.reshape(batch, -1)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy per-class NMS for a batch of images at once.

    Args:
        boxes: ``[B, N, 4]``; scores, labels, valid: ``[B, N]`` (invalid entries never
            suppress and are never kept).
        iou_threshold: a box is dropped when it overlaps a kept, higher-scored box of
            the same class by more than this IoU.

    Returns:
        keep: bool ``[B, N]``, exactly what sequential greedy NMS keeps.

    Greedy NMS keeps box j iff no *kept* higher-scored box suppresses it. That rule
    fixes keep[j] from keep[<j], so iterating keep <- not any(keep[i] & S[i, j]) from
    all-true settles after at most N rounds (usually 2 to 4), each one batched matmul.

    Raises:
        Nothing.
    """
    order = scores.masked_fill(~valid, float("-inf")).argsort(dim=1, descending=True, stable=True)
    take = lambda t: t.gather(1, order if t.dim() == 2 else order[..., None].expand_as(t))  # noqa: E731
    boxes_s, labels_s, valid_s = take(boxes), take(labels), take(valid)
    n = boxes.shape[1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=boxes.device).triu(1)  # i ranked before j
    suppress = (box_iou(boxes_s, boxes_s) > iou_threshold) & (labels_s[:, :, None] == labels_s[:, None, :])
    suppress &= earlier & valid_s[:, :, None]
    suppress_f = suppress.to(boxes.dtype)
    keep = valid_s.clone()
    for _ in range(n + 1):
        hit = torch.einsum("bi,bij->bj", keep.to(boxes.dtype), suppress_f) > 0
        new_keep = valid_s & ~hit
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    out = torch.zeros_like(keep)
    return out.scatter(1, order, keep)


def postprocess(raw: torch.Tensor, stride: int, score_threshold: float = 0.01, iou_threshold: float = 0.5,
                max_detections: int = 100) -> list[dict[str, torch.Tensor]]:
    """Raw head output ``[B, 5 + C, H, W]`` -> detections per image.

    Returns a list of B dicts with ``boxes [n, 4]`` (x1, y1, x2, y2 pixels),
    ``scores [n]`` and ``labels [n]`` (int64), highest score first, n <= max_detections.

    Raises:
        SnnconvError: as :func:`decode`.
    """
    boxes, scores, labels = decode(raw, stride)
    valid = scores > score_threshold
    keep = batched_nms(boxes, scores, labels, valid, iou_threshold)
    results = []
    for b in range(raw.shape[0]):
        index = keep[b].nonzero().squeeze(1)
        index = index[scores[b, index].argsort(descending=True, stable=True)[:max_detections]]
        results.append({"boxes": boxes[b, index], "scores": scores[b, index], "labels": labels[b, index]})
    return results

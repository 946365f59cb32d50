"""Detection loss: centre-cell assignment, objectness BCE, class CE, box L1 + GIoU."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .boxes import decode_boxes, generalized_iou
from .model import BOX_CHANNELS, CLS_START, OBJ_CHANNEL

# Loss weights (YOLOX's choice for the IoU term; the others at 1).
BOX_WEIGHT = 5.0


def assign_cells(boxes: torch.Tensor, labels: torch.Tensor, ignore: torch.Tensor, grid: tuple[int, int], stride: int) -> torch.Tensor:
    """Which object each grid cell predicts: int64 ``[B, H, W]``, -1 for background.

    An object is assigned to the cell holding its box centre. When two objects share a
    cell, the smaller one wins (FCOS's minimal-area rule); ties go to the lower index,
    so the assignment is deterministic. Ignored and padding objects are never assigned.

    Args:
        boxes: ``[B, M, 4]`` pixels; labels: ``[B, M]`` (-1 padding); ignore: ``[B, M]``.
        grid: (H, W) of the head output; stride: pixels per cell.

    Raises:
        Nothing.
    """
    batch, most = labels.shape
    height, width = grid
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    col = (centre[..., 0] / stride).floor().long().clamp(0, width - 1)
    row = (centre[..., 1] / stride).floor().long().clamp(0, height - 1)
    real = (labels >= 0) & ~ignore
    flat = torch.arange(batch, device=boxes.device)[:, None] * (height * width) + row * width + col  # [B, M]
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).clamp(min=0)
    # One integer key per object: smaller area first, then lower index.
    key = (area * 16).round().long() * (most + 1) + torch.arange(most, device=boxes.device)
    big = torch.iinfo(torch.long).max
    key = torch.where(real, key, torch.full_like(key, big))
    best = torch.full((batch * height * width,), big, dtype=torch.long, device=boxes.device)
    best.scatter_reduce_(0, flat[real], key[real], reduce="amin")
    owner = torch.where(best == big, torch.full_like(best, -1), best % (most + 1))
    return owner.reshape(batch, height, width)


def detection_loss(raw: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, ignore: torch.Tensor, stride: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of a raw head output ``[B, 5 + C, H, W]`` against padded targets.

    objectness: BCE on every cell (target 1 on assigned cells); class: cross-entropy
    and box: L1 on the encoding plus (1 - GIoU) on the decoded box, both on assigned
    cells only. All terms are summed and divided by the number of assigned cells.

    Returns:
        (scalar loss, float parts for logging).

    Raises:
        Nothing.
    """
    batch, _, height, width = raw.shape
    owner = assign_cells(boxes, labels, ignore, (height, width), stride)
    positive = owner >= 0
    npos = max(1, int(positive.sum()))
    obj_loss = F.binary_cross_entropy_with_logits(raw[:, OBJ_CHANNEL], positive.to(raw.dtype), reduction="sum") / npos
    b_index, rows, cols = positive.nonzero(as_tuple=True)
    obj_index = owner[positive]
    target_labels = labels[b_index, obj_index]
    target_boxes = boxes[b_index, obj_index].to(raw.dtype)
    cls_logits = raw[b_index, CLS_START:, rows, cols]
    cls_loss = F.cross_entropy(cls_logits, target_labels, reduction="sum") / npos
    box_raw = raw[:, BOX_CHANNELS]
    predicted = decode_boxes(box_raw, stride)[b_index, rows, cols]
    giou_loss = (1 - generalized_iou(predicted, target_boxes)).sum() / npos
    # L1 on the encoding: in-cell offset of the centre and log size in cells.
    centre = (target_boxes[:, :2] + target_boxes[:, 2:]) / 2 / stride
    size = (target_boxes[:, 2:] - target_boxes[:, :2]).clamp(min=1.0) / stride
    encoded = torch.cat([centre - torch.stack([cols, rows], 1).to(raw.dtype), size.log()], 1)
    raw_cells = box_raw[b_index, :, rows, cols]
    l1_loss = (torch.cat([raw_cells[:, :2].sigmoid(), raw_cells[:, 2:]], 1) - encoded).abs().sum() / npos
    loss = obj_loss + cls_loss + BOX_WEIGHT * giou_loss + l1_loss
    parts = {k: float(v.detach()) for k, v in (("obj", obj_loss), ("cls", cls_loss), ("giou", giou_loss), ("l1", l1_loss))}
    return loss, parts

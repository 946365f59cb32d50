"""MNIST-detection: MNIST digits scattered at random scales and positions on blank canvases.

A real detection task (ten classes, one to ``max_objects`` objects per image, boxes of
very different sizes) that needs no download beyond the official MNIST idx files.
Generation is deterministic from ``seed``; train canvases use digits of the MNIST train
split and test canvases digits of the test split, so no digit image is in both.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.idx import _FILES, _folder, read_idx
from .dataset import DetectionDataset, pack_targets, register_detection_dataset
from .model import STRIDE

CLASS_NAMES = [str(d) for d in range(10)]
# Pixel mean/std of the default canvases (64x64, 1-3 digits of 12-32 px), measured on
# 2,000 generated training images and rounded; they only set the input scale.
MEAN, STD = (0.033,), (0.153,)
# A resized digit's box is the tight box of its pixels brighter than this (0..255): the
# faint anti-aliased rim of MNIST strokes is not part of the object.
_INK = 64
_PLACEMENT_TRIES = 20
# Two digits may overlap a little (as objects do), but not so much that one hides the other.
_MAX_OVERLAP_IOU = 0.1


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(others) - inter)


def scatter_digits(digits: np.ndarray, digit_labels: np.ndarray, count: int, size: int = 64, max_objects: int = 3,
                   min_scale: int = 12, max_scale: int = 32, seed: int = 0) -> DetectionDataset:
    """Paste digits onto ``count`` blank ``size x size`` canvases.

    Args:
        digits: uint8 ``[N, 28, 28]`` source digits; digit_labels: ``[N]`` their classes.
        count: number of canvases.
        size: canvas side in pixels (a multiple of 16 for the detector).
        max_objects: each canvas gets 1..max_objects digits (fewer if no free spot is found).
        min_scale, max_scale: the 28x28 digit is resized to s x s, s uniform in this range.
        seed: the whole split is a function of (inputs, seed).

    Returns:
        A :class:`DetectionDataset` with images ``[count, 1, size, size]``; digit boxes
        are the tight boxes of their ink. Two digits never share a stride-8 grid cell
        centre and overlap by IoU <= 0.1.

    Raises:
        ValueError: the scales do not satisfy 1 <= min_scale <= max_scale <= size
            (:func:`load_mnist_detection` reports it as SnnconvError).
    """
    if not (1 <= min_scale <= max_scale <= size):
        raise ValueError(f"need 1 <= min_scale <= max_scale <= size, got {min_scale}, {max_scale}, {size}")
    rng = np.random.default_rng(seed)
    images = np.zeros((count, size, size), dtype=np.uint8)
    per_image = []
    resized_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for i in range(count):
        boxes: list[np.ndarray] = []
        labels: list[int] = []
        cells: set[tuple[int, int]] = set()
        for _ in range(int(rng.integers(1, max_objects + 1))):
            index = int(rng.integers(0, len(digits)))
            scale = int(rng.integers(min_scale, max_scale + 1))
            key = (index, scale)
            if key not in resized_cache:
                source = torch.from_numpy(digits[index].astype(np.float32))[None, None]
                patch = F.interpolate(source, size=(scale, scale), mode="bilinear", antialias=True, align_corners=False)
                patch = patch[0, 0].clamp(0, 255).round().to(torch.uint8).numpy()
                rows, cols = np.nonzero(patch > _INK)
                tight = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32) if len(rows) else None
                resized_cache[key] = (patch, tight)
            patch, tight = resized_cache[key]
            if tight is None:
                continue
            for _ in range(_PLACEMENT_TRIES):
                x0, y0 = (int(v) for v in rng.integers(0, size - scale + 1, size=2))
                box = tight + np.array([x0, y0, x0, y0], dtype=np.float32)
                cell = (int((box[0] + box[2]) / 2 // STRIDE), int((box[1] + box[3]) / 2 // STRIDE))
                if cell in cells or (boxes and _iou(box, np.stack(boxes)).max() > _MAX_OVERLAP_IOU):
                    continue
                region = images[i, y0 : y0 + scale, x0 : x0 + scale]
                np.maximum(region, patch, out=region)
                boxes.append(box)
                labels.append(int(digit_labels[index]))
                cells.add(cell)
                break
        per_image.append((np.stack(boxes) if boxes else np.zeros((0, 4), np.float32), np.array(labels), np.zeros(len(labels), bool)))
    packed = pack_targets(per_image)
    info = {"count": count, "size": size, "max_objects": max_objects, "min_scale": min_scale, "max_scale": max_scale, "seed": seed}
    return DetectionDataset("mnist_detection", torch.from_numpy(images).unsqueeze(1), *packed, CLASS_NAMES, MEAN, STD, info)


@register_detection_dataset("mnist_detection")
def load_mnist_detection(data_dir: Path | None, split: str, train_count: int = 6000, test_count: int = 500, size: int = 64,
                         max_objects: int = 3, min_scale: int = 12, max_scale: int = 32, seed: int = 0) -> DetectionDataset:
    """MNIST-detection from the MNIST idx files in ``data_dir`` (or its ``raw/``).

    ``train_count`` / ``test_count`` canvases per split (both options are accepted for
    either split, so one option dict describes the whole dataset); the split's seed is
    ``2 * seed`` (train) or ``2 * seed + 1`` (test).

    Raises:
        SnnconvError: no ``data_dir``; the MNIST idx files are missing or damaged (as
            :func:`snnconv.data.idx.read_idx`); the split's count is not an integer >= 1;
            ``size`` is not a multiple of 16; or the digit scales do not fit the canvas.
    """
    from ..errors import SnnconvError

    if data_dir is None:
        raise SnnconvError("dataset 'mnist_detection' needs --data-dir: the folder with the MNIST idx .gz files")
    folder = _folder(data_dir, "MNIST")
    images_file, labels_file = _FILES[split]
    digits = read_idx(folder / images_file, 0x00000803)
    labels = read_idx(folder / labels_file, 0x00000801)
    count = train_count if split == "train" else test_count
    if not (isinstance(count, int) and count >= 1):
        raise SnnconvError(f"{split}_count must be an integer >= 1, got {count!r}")
    if size % 16 or size < 16:
        raise SnnconvError(f"canvas size must be a multiple of 16 (the detector pools 4 times), got {size}")
    try:
        return scatter_digits(digits, labels, count, size, max_objects, min_scale, max_scale, 2 * seed + (split == "test"))
    except ValueError as err:
        raise SnnconvError(f"mnist_detection: {err}") from err

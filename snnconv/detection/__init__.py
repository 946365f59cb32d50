"""Object detection: a YOLO-style detector, its data, training, metrics and SNN evaluation.

    model.py          the registered ``yolo_detector`` (one raw output [B, 5 + C, H, W])
    boxes.py          IoU/GIoU, decoding the raw output, batched per-class NMS
    dataset.py        ``DetectionDataset`` tensors, letterbox resize, the dataset registry
    mnist_boxes.py    MNIST-detection: digits scattered on canvases (seeded)
    voc.py, coco.py   PASCAL VOC (XML) and COCO (instances JSON) loaders
    loss.py           centre-cell assignment and the detection loss
    metrics.py        mAP@0.5 and mAP@[.5:.95] by pycocotools' COCOeval
    train.py          the detection task of the shared training loop (snnconv.training)
    evaluate.py       convert, simulate, mAP at every step, results JSON

Importing this package registers the model and the datasets only; training and
evaluation are imported on first use. ``import snnconv`` does not import this package:
the model registry imports :mod:`.model` on the first lookup of ``yolo_detector``.
"""
from __future__ import annotations

import importlib

from . import coco, mnist_boxes, voc  # noqa: F401  (dataset registration)
from .boxes import batched_nms, box_iou, decode, generalized_iou, postprocess
from .dataset import DetectionDataset, list_detection_datasets, load_detection_dataset, register_detection_dataset
from .model import STRIDE, YOLODetector, yolo_detector

_LAZY = {
    "detection_map": "metrics",
    "detection_loss": "loss",
    "assign_cells": "loss",
    "DetectTrainConfig": "train",
    "train_detector": "train",
    "evaluate_detector": "evaluate",
    "run_detection_method": "evaluate",
    "format_detection_table": "evaluate",
}


def __getattr__(name: str):
    """The training and evaluation names, imported on first use.

    Raises:
        AttributeError: ``name`` is not one of them.
    """
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "STRIDE",
    "DetectionDataset",
    "YOLODetector",
    "batched_nms",
    "box_iou",
    "decode",
    "generalized_iou",
    "list_detection_datasets",
    "load_detection_dataset",
    "postprocess",
    "register_detection_dataset",
    "yolo_detector",
    *_LAZY,
]

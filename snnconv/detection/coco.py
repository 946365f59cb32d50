"""COCO detection from an official instances JSON and its image folder::

    annotations/instances_{train2017,val2017}.json
    {train2017,val2017}/{file_name}

The JSON's ``bbox`` is ``[x, y, width, height]`` in pixels (continuous coordinates).
Category ids (1..90 with gaps in COCO) map to contiguous labels in increasing id order.
``iscrowd`` annotations are kept as ``ignore``, as COCOeval does.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import SnnconvError
from .dataset import DetectionDataset, letterbox, pack_targets, register_detection_dataset
from .voc import MEAN, STD


def load_coco(annotation_file: Path, image_dir: Path, size: int = 320, limit: int | None = None) -> DetectionDataset:
    """Read a COCO instances file and the images it lists.

    Args:
        annotation_file: ``instances_*.json``.
        image_dir: the folder holding each image's ``file_name``.
        size: images are letterboxed to ``size x size``.
        limit: keep only the first ``limit`` images (in the JSON's order).

    Returns:
        A :class:`DetectionDataset` (``info["category_ids"]`` maps labels back to COCO ids).

    Raises:
        SnnconvError: the instances file is unreadable or not an instances JSON, lists no
            images, or an annotation names a category missing from ``categories``.
    """
    annotation_file = Path(annotation_file)
    try:
        data = json.loads(annotation_file.read_text())
        images_meta = data["images"]
        categories = sorted(data["categories"], key=lambda c: c["id"])
        annotations = data.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SnnconvError(f"cannot read COCO instances file {str(annotation_file)!r} ({err}): not an official instances JSON") from err
    images_meta = images_meta[:limit] if limit is not None else images_meta
    if not images_meta:
        raise SnnconvError(f"{str(annotation_file)!r} lists no images")
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    row_of = {img["id"]: i for i, img in enumerate(images_meta)}
    objects: list[list[tuple[list[float], int, bool]]] = [[] for _ in images_meta]
    for ann in annotations:
        row = row_of.get(ann["image_id"])
        if row is None:
            continue
        if ann["category_id"] not in label_of:
            raise SnnconvError(f"annotation {ann.get('id')} has category {ann['category_id']}, which is not in 'categories'")
        x, y, w, h = (float(v) for v in ann["bbox"])
        objects[row].append(([x, y, x + w, y + h], label_of[ann["category_id"]], bool(ann.get("iscrowd", 0))))
    images = np.zeros((len(images_meta), 3, size, size), dtype=np.uint8)
    per_image = []
    for i, meta in enumerate(images_meta):
        images[i], scale, (pad_x, pad_y) = letterbox(Path(image_dir) / meta["file_name"], size)
        boxes = np.array([o[0] for o in objects[i]], dtype=np.float32).reshape(-1, 4)
        boxes = boxes * scale + np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)
        per_image.append((boxes, np.array([o[1] for o in objects[i]], dtype=np.int64), np.array([o[2] for o in objects[i]], dtype=bool)))
    info = {"size": size, "image_ids": [img["id"] for img in images_meta], "category_ids": [c["id"] for c in categories]}
    return DetectionDataset("coco", torch.from_numpy(images), *pack_targets(per_image), [c["name"] for c in categories], MEAN, STD, info)


@register_detection_dataset("coco2017")
def load_coco2017(data_dir: Path | None, split: str, size: int = 320, limit: int | None = None) -> DetectionDataset:
    """COCO 2017: ``train2017`` for training, ``val2017`` for evaluation, from ``data_dir``
    holding ``annotations/instances_{train2017,val2017}.json`` and the image folders.

    Raises:
        SnnconvError: no ``data_dir``, its instances file is missing, or as :func:`load_coco`.
    """
    if data_dir is None:
        raise SnnconvError("dataset 'coco2017' needs --data-dir: the folder with annotations/ and the image folders")
    name = "train2017" if split == "train" else "val2017"
    annotation_file = data_dir / "annotations" / f"instances_{name}.json"
    if not annotation_file.is_file():
        raise SnnconvError(f"missing {str(annotation_file)!r}: pass --data-dir pointing at the COCO folder")
    return load_coco(annotation_file, data_dir / name, size, limit)

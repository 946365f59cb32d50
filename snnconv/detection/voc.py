"""PASCAL VOC detection from the official devkit layout::

    VOCdevkit/VOC2007/Annotations/{id}.xml
    VOCdevkit/VOC2007/JPEGImages/{id}.jpg
    VOCdevkit/VOC2007/ImageSets/Main/{trainval,test,...}.txt

Boxes in the XML are 1-based inclusive pixel indices (xmin..xmax); they become
continuous coordinates x1 = xmin - 1, x2 = xmax, then follow the letterbox resize.
Objects marked ``<difficult>1</difficult>`` are kept as ``ignore`` (the VOC protocol
neither rewards nor penalises detecting them).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from ..errors import SnnconvError
from .dataset import DetectionDataset, letterbox, pack_targets, register_detection_dataset

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
# ImageNet statistics: the usual input scaling for natural-image detectors.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise SnnconvError(f"{where}: missing <{tag}>: not a VOC annotation file")
    return child.text.strip()


def parse_voc_xml(path: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """One VOC annotation: (boxes ``[n, 4]`` continuous x1, y1, x2, y2 in original pixels,
    class names ``[n]``, difficult flags ``[n]``).

    Raises:
        SnnconvError: the file is missing or not well-formed XML, lacks a required tag or
            a ``<bndbox>``, or a coordinate is not a number.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise SnnconvError(f"cannot parse VOC annotation {str(path)!r} ({err}): the file is missing or corrupt") from err
    boxes, names, difficult = [], [], []
    for obj in root.iter("object"):
        where = f"{path}: <object>"
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise SnnconvError(f"{where} has no <bndbox>: not a VOC annotation file")
        try:
            xmin, ymin, xmax, ymax = (float(_text(bndbox, tag, where)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as err:
            raise SnnconvError(f"{where}: a box coordinate is not a number ({err})") from err
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        names.append(_text(obj, "name", where))
        flag = obj.find("difficult")
        difficult.append(flag is not None and (flag.text or "0").strip() == "1")
    return np.array(boxes, dtype=np.float32).reshape(-1, 4), names, np.array(difficult, dtype=bool)


def _voc_root(data_dir: Path, year: str) -> Path:
    for candidate in (data_dir / "VOCdevkit" / f"VOC{year}", data_dir / f"VOC{year}", data_dir):
        if (candidate / "Annotations").is_dir() and (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise SnnconvError(
        f"no VOC{year} folder under {str(data_dir)!r}: pass --data-dir pointing at VOCdevkit (or its parent), "
        f"holding VOC{year}/Annotations, JPEGImages and ImageSets/Main"
    )


def load_voc(root: Path, image_set: str, size: int = 320, limit: int | None = None, year: str = "2007") -> DetectionDataset:
    """Read the images listed in ``ImageSets/Main/{image_set}.txt`` of ``VOC{year}``.

    Args:
        root: ``VOCdevkit``, its parent, or the ``VOC{year}`` folder itself.
        image_set: e.g. ``"trainval"`` or ``"test"``.
        size: images are letterboxed to ``size x size``.
        limit: read only the first ``limit`` ids.

    Returns:
        A :class:`DetectionDataset` with images ``[n, 3, size, size]`` and 20 classes.

    Raises:
        SnnconvError: no VOC folder under ``data_dir``; the image-set listing is missing
            or empty; an annotation fails :func:`parse_voc_xml` or names a class outside VOC.
    """
    folder = _voc_root(Path(root), year)
    listing = folder / "ImageSets" / "Main" / f"{image_set}.txt"
    if not listing.is_file():
        raise SnnconvError(f"missing {str(listing)!r}: the VOC image set {image_set!r} is not in this devkit")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    ids = ids[:limit] if limit is not None else ids
    if not ids:
        raise SnnconvError(f"{str(listing)!r} lists no images")
    class_index = {name: i for i, name in enumerate(VOC_CLASSES)}
    images = np.zeros((len(ids), 3, size, size), dtype=np.uint8)
    per_image = []
    for i, image_id in enumerate(ids):
        boxes, names, difficult = parse_voc_xml(folder / "Annotations" / f"{image_id}.xml")
        unknown = sorted(set(names) - set(class_index))
        if unknown:
            raise SnnconvError(f"{image_id}.xml names classes {unknown} that are not VOC classes")
        images[i], scale, (pad_x, pad_y) = letterbox(folder / "JPEGImages" / f"{image_id}.jpg", size)
        boxes = boxes * scale + np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)
        per_image.append((boxes, np.array([class_index[n] for n in names], dtype=np.int64), difficult))
    info = {"year": year, "image_set": image_set, "size": size, "ids": ids}
    return DetectionDataset(f"voc{year}", torch.from_numpy(images), *pack_targets(per_image), list(VOC_CLASSES), MEAN, STD, info)


@register_detection_dataset("voc2007")
def load_voc2007(data_dir: Path | None, split: str, size: int = 320, limit: int | None = None) -> DetectionDataset:
    """PASCAL VOC 2007: ``trainval`` for training, ``test`` for evaluation.

    Raises:
        SnnconvError: no ``data_dir``, or as :func:`load_voc`.
    """
    if data_dir is None:
        raise SnnconvError("dataset 'voc2007' needs --data-dir: the VOCdevkit folder")
    return load_voc(data_dir, "trainval" if split == "train" else "test", size, limit, "2007")

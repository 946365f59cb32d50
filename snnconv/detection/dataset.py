"""Detection datasets as tensors, a letterbox resize, and the detection-dataset registry.

Every loader returns a :class:`DetectionDataset`: square images of one size (so a split
is one tensor, like the classification datasets) and padded box tensors. Letterboxing is
a uniform scale plus a shift, which leaves every IoU, and so mAP over all box sizes,
unchanged; only COCO's small/medium/large split would move.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.registry import normalize, split_and_folder
from ..errors import SnnconvError
from ..registry import Registry


@dataclass
class DetectionDataset:
    """A whole split held as tensors.

    images: uint8 ``[N, C, S, S]``; boxes: float32 ``[N, M, 4]`` (x1, y1, x2, y2 pixels,
    continuous coordinates); labels: int64 ``[N, M]`` with -1 for padding; ignore: bool
    ``[N, M]`` (VOC "difficult", COCO "iscrowd": neither a hit nor a miss when evaluated);
    mean/std per channel on the 0..1 scale.
    """

    name: str
    images: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    ignore: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.images.shape[0]

    def normalized(self, index: slice | torch.Tensor | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images as float ``(x / 255 - mean) / std`` ``[n, C, S, S]``, optionally a subset."""
        return normalize(self.images if index is None else self.images[index], self.mean, self.std, device)

    def targets(self, index: slice | None = None) -> list[dict[str, torch.Tensor]]:
        """Ground truth per image: dicts with ``boxes [n, 4]``, ``labels [n]``, ``ignore [n]``."""
        rows = range(len(self))[index or slice(None)]
        out = []
        for i in rows:
            present = self.labels[i] >= 0
            out.append({"boxes": self.boxes[i][present], "labels": self.labels[i][present], "ignore": self.ignore[i][present]})
        return out


def pack_targets(per_image: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[(boxes [n, 4], labels [n], ignore [n]) per image] -> padded (boxes, labels, ignore) tensors."""
    most = max([len(labels) for _, labels, _ in per_image] + [1])
    boxes = torch.zeros(len(per_image), most, 4)
    labels = torch.full((len(per_image), most), -1, dtype=torch.long)
    ignore = torch.zeros(len(per_image), most, dtype=torch.bool)
    for i, (b, lab, ign) in enumerate(per_image):
        n = len(lab)
        if n:
            boxes[i, :n] = torch.as_tensor(np.asarray(b, dtype=np.float32).reshape(n, 4))
            labels[i, :n] = torch.as_tensor(np.asarray(lab, dtype=np.int64))
            ignore[i, :n] = torch.as_tensor(np.asarray(ign, dtype=bool))
    return boxes, labels, ignore


def letterbox(path: Path, size: int, channels: int = 3) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Decode an image with Pillow and fit it into ``size x size`` keeping its aspect ratio.

    Returns (uint8 ``[channels, size, size]``, scale, (pad_x, pad_y)): a point (x, y) of
    the original image lands at (x * scale + pad_x, y * scale + pad_y).

    Raises:
        SnnconvError: the image file is missing or cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            width, height = img.size
            scale = size / max(width, height)
            new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
            resized = img.resize((new_w, new_h), Image.BILINEAR)
    except (OSError, UnidentifiedImageError) as err:
        raise SnnconvError(f"cannot decode image {str(path)!r} ({err}): the file is missing or corrupt") from err
    canvas = np.zeros((size, size, channels), dtype=np.uint8)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = np.asarray(resized).reshape(new_h, new_w, channels)
    return canvas.transpose(2, 0, 1), scale, (float(pad_x), float(pad_y))


Loader = Callable[..., DetectionDataset]
_LOADERS: Registry[Loader] = Registry("detection dataset")


def register_detection_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(data_dir, split, **options) -> DetectionDataset``.

    Raises:
        SnnconvError: a detection dataset of that name is already registered (the message names where).
    """
    return _LOADERS.register(name)


def list_detection_datasets(pattern: str = "*") -> list[str]:
    """Names of the registered detection datasets matching the ``fnmatch`` wildcard ``pattern``, sorted."""
    return _LOADERS.names(pattern)


def load_detection_dataset(name: str | Loader, split: str, data_dir: str | Path | None = None, **options) -> DetectionDataset:
    """Load split ``"train"`` or ``"test"`` of detection dataset ``name`` (a name or the
    registered loader; options: e.g. ``size``).

    Raises:
        SnnconvError: the dataset is not registered, the split or folder is wrong, or
            the loader cannot read the files.
    """
    loader = _LOADERS.get(name)
    return loader(split_and_folder(split, data_dir), split, **options)

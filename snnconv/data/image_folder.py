"""ImageNet-style class-per-folder trees: ``DATA_DIR/{train,val}/<class>/*.JPEG``.

Every image is decoded with Pillow, its shorter side resized to ``size / 0.875``
(256 for 224, the usual ImageNet evaluation transform) and center-cropped to
``size x size``. Class indices follow the sorted folder names of ``train/`` (of the
split's own folder when ``train/`` is absent), so train and val agree.

Like every snnconv dataset the split is held in memory as uint8 (``3 * size**2`` bytes
per image: 150 KB at 224), so this suits ImageNet subsets, ImageNet-100 or small
sizes; the registered ``imagenet_folder`` uses :data:`IMAGE_SIZE`, and
:func:`load_image_folder` takes any size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import SnnconvError
from .registry import Dataset, register_dataset

IMAGE_SIZE = 224
RESIZE_RATIO = 0.875  # crop / resize, as in the standard ImageNet evaluation pipeline
EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
SPLIT_FOLDERS = {"train": "train", "test": "val"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image as uint8 ``[size, size, 3]``: shorter side to ``round(size / 0.875)``, center crop.

    Raises:
        SnnconvError: ``path`` cannot be opened or decoded as an image (corrupt or truncated).
    """
    from PIL import Image, UnidentifiedImageError

    short = max(size, round(size / RESIZE_RATIO))
    try:
        with Image.open(path) as img:
            img.draft("RGB", (short, short))  # JPEG: decode at a reduced scale when that is still >= short
            img = img.convert("RGB")
            width, height = img.size
            scale = short / min(width, height)
            new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
            img = img.resize((new_w, new_h), Image.BILINEAR)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise SnnconvError(f"cannot decode image {str(path)!r} ({err}): the file is corrupt or truncated; replace or delete it") from err


def load_image_folder(data_dir: Path | None, split: str, size: int = IMAGE_SIZE, name: str = "imagenet_folder") -> Dataset:
    """Load ``data_dir/train`` (split "train") or ``data_dir/val`` (split "test") at ``size x size``.

    Raises:
        SnnconvError: no ``data_dir``; ``size`` < 1; the split folder is missing, has no
            class folders, or classes the training folder lacks; it holds no images; or an
            image cannot be decoded.
    """
    if data_dir is None:
        raise SnnconvError(f"dataset {name!r} needs --data-dir: the folder holding train/ and val/ (one sub-folder per class)")
    if size < 1:
        raise SnnconvError(f"image size must be >= 1, got {size}")
    folder = data_dir / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise SnnconvError(f"missing folder {str(folder)!r}: {name} expects DATA_DIR/train/<class>/*.JPEG and DATA_DIR/val/<class>/*.JPEG")
    reference = data_dir / "train" if (data_dir / "train").is_dir() else folder
    classes = _classes(reference)
    if not classes:
        raise SnnconvError(f"{str(reference)!r} has no class folders: put each class's images in its own sub-folder")
    extra = sorted(set(_classes(folder)) - set(classes))
    if extra:
        raise SnnconvError(f"{str(folder)!r} has classes missing from {str(reference)!r}: {', '.join(extra[:5])}; make both hold the same class folders")
    files, labels = [], []
    for index, cls in enumerate(classes):
        class_dir = folder / cls
        if class_dir.is_dir():
            found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())
            files += found
            labels += [index] * len(found)
    if not files:
        raise SnnconvError(f"no images ({', '.join(EXTENSIONS)}) under {str(folder)!r}: check --data-dir")
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(files):  # decoding is per image by nature; done once per load
        images[i] = decode_image(path, size)
    return Dataset(
        name,
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.tensor(labels, dtype=torch.int64),
        len(classes),
        IMAGENET_MEAN,
        IMAGENET_STD,
        flip=True,
    )


@register_dataset("imagenet_folder")
def load_imagenet_folder(data_dir: Path | None, split: str) -> Dataset:
    """An ImageNet-style class-per-folder tree at :data:`IMAGE_SIZE` pixels (read when called).

    Raises:
        SnnconvError: as :func:`load_image_folder`.
    """
    return load_image_folder(data_dir, split, IMAGE_SIZE)

"""The CIFAR-10 JPEG (quality ~75) copy: an npz of concatenated JPEG byte strings.

Numbers measured on it are "CIFAR-10 (JPEG-q75)", not CIFAR-10: the images are lossy.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..errors import SnnconvError
from .registry import Dataset, register_dataset

FILE_NAME = "cifar10_jpeg_q75_fullorder.npz"


@register_dataset("cifar10_jpeg")
def load_cifar10_jpeg(data_dir, split: str) -> Dataset:
    """Decode ``cifar10_jpeg_q75_fullorder.npz`` (50k train / 10k test, 32x32 RGB) with Pillow.

    Raises:
        SnnconvError: no ``data_dir``, the npz file is missing or unreadable (corrupt,
            or holding pickled objects, which are never loaded), or its offsets do not match
            the JPEG data.
    """
    from PIL import Image

    if data_dir is None:
        raise SnnconvError(f"dataset 'cifar10_jpeg' needs --data-dir: the folder holding {FILE_NAME}")
    path = Path(data_dir) / FILE_NAME
    if not path.is_file():
        raise SnnconvError(f"missing file {str(path)!r}: pass --data-dir pointing at the folder with {FILE_NAME}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            blob = archive[f"{split}_jpeg"]
            offsets = archive[f"{split}_offsets"]
            labels = archive[f"{split}_labels"]
    except (OSError, ValueError, KeyError) as err:
        raise SnnconvError(f"cannot read {str(path)!r} ({err}): corrupt or not the CIFAR-10 JPEG npz") from err
    if offsets.shape[0] != labels.shape[0] + 1 or offsets[-1] != blob.shape[0]:
        raise SnnconvError(f"{str(path)!r}: offsets do not match the JPEG data; the file is corrupt")
    images = np.empty((labels.shape[0], 32, 32, 3), dtype=np.uint8)
    for i in range(labels.shape[0]):  # decoding is per image by nature; done once per load
        with Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())) as img:
            images[i] = np.asarray(img.convert("RGB"))
    return Dataset(
        "cifar10_jpeg",
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(labels.astype(np.int64)),
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        flip=True,
    )

"""MNIST and Fashion-MNIST from the official idx ``.gz`` files."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import SnnconvError
from .registry import Dataset, register_dataset

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one idx file (gzipped or not): big-endian magic, dims, then uint8 data."""
    if not path.is_file():
        raise SnnconvError(f"missing file {str(path)!r}: put the official idx .gz files in --data-dir (or its raw/ folder)")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise SnnconvError(f"cannot read {str(path)!r} ({err}): the file is corrupt or truncated; download it again") from err
    if len(raw) < 8:
        raise SnnconvError(f"{str(path)!r} is too short to be an idx file: download it again")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expected_magic:
        raise SnnconvError(f"{str(path)!r} has magic 0x{magic:08x}, expected 0x{expected_magic:08x}: not the right idx file")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise SnnconvError(f"{str(path)!r} holds {data.size} bytes of data, its header says {int(np.prod(dims))}: truncated file")
    return data.reshape(dims)


def _folder(data_dir: Path | None, name: str) -> Path:
    if data_dir is None:
        raise SnnconvError(f"dataset {name!r} needs --data-dir: the folder with its idx .gz files")
    for candidate in (data_dir, data_dir / "raw", data_dir / name / "raw", data_dir / name):
        if (candidate / _FILES["test"][0]).is_file():
            return candidate
    return data_dir


def _load(data_dir, split, name, mean, std) -> Dataset:
    folder = _folder(data_dir, name)
    images_file, labels_file = _FILES[split]
    images = read_idx(folder / images_file, 0x00000803)
    labels = read_idx(folder / labels_file, 0x00000801)
    if images.shape[0] != labels.shape[0]:
        raise SnnconvError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels in {str(folder)!r}")
    return Dataset(name, torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), 10, (mean,), (std,))


@register_dataset("mnist")
def load_mnist(data_dir, split: str) -> Dataset:
    """MNIST: 60k train / 10k test, 28x28 grey."""
    return _load(data_dir, split, "MNIST", 0.1307, 0.3081)


@register_dataset("fashion_mnist")
def load_fashion_mnist(data_dir, split: str) -> Dataset:
    """Fashion-MNIST: 60k train / 10k test, 28x28 grey."""
    return _load(data_dir, split, "FashionMNIST", 0.2860, 0.3530)

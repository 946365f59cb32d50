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
    """Read one idx file (gzipped or not): big-endian magic, dims, then uint8 data.

    Raises:
        SnnconvError: ``path`` is missing, not a readable gzip file, shorter than an idx
            header, has a magic number other than ``expected_magic``, or holds fewer or more
            bytes than its header says.
    """
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


# MNIST and Fashion-MNIST use the same file names, so a folder of one passed as the other
# loads without complaint unless its content is checked. Official split sizes and mean
# pixel intensities (0..1), measured on shared/data with load_dataset(...).images.mean() / 255.
_OFFICIAL = {
    "MNIST": {"train": (60000, 0.1307), "test": (10000, 0.1325)},
    "FashionMNIST": {"train": (60000, 0.2860), "test": (10000, 0.2868)},
}
_REGISTERED = {"MNIST": "mnist", "FashionMNIST": "fashion_mnist"}
_MEAN_TOLERANCE = 0.05  # the two datasets' means are 0.154 apart


def check_content(images: np.ndarray, name: str, split: str, images_path: Path) -> None:
    """Refuse the other dataset's files (MNIST given as Fashion-MNIST or the reverse).

    The images file is the other dataset's if its md5 is the other's published sum, or
    if it has the official number of images and a mean intensity within 0.05 of the
    other's and not of this one's. Files of other sizes (a user's own data) pass.

    Raises:
        SnnconvError: naming the file, what it holds and the fix.
    """
    from .downloads import DOWNLOADS, md5sum

    other = next(o for o in _OFFICIAL if o != name)
    published = {r.filename: r.md5 for r in DOWNLOADS[_REGISTERED[other]]}
    count, own_mean = _OFFICIAL[name][split]
    other_mean = _OFFICIAL[other][split][1]
    reason = None
    if images_path.suffix == ".gz" and md5sum(images_path) == published.get(images_path.name):
        reason = f"its md5 is {other}'s"
    elif images.shape[0] == count:
        mean = float(images.mean(dtype=np.float64)) / 255.0
        if abs(mean - other_mean) <= _MEAN_TOLERANCE < abs(mean - own_mean):
            reason = f"its mean intensity {mean:.4f} is {other}'s ({other_mean:.4f}), not {name}'s ({own_mean:.4f})"
    if reason:
        raise SnnconvError(f"{str(images_path)!r} holds {other}, not {name} ({reason}): point --data-dir at the {name} idx files")


def _load(data_dir, split, name, mean, std) -> Dataset:
    folder = _folder(data_dir, name)
    images_file, labels_file = _FILES[split]
    images = read_idx(folder / images_file, 0x00000803)
    labels = read_idx(folder / labels_file, 0x00000801)
    if images.shape[0] != labels.shape[0]:
        raise SnnconvError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels in {str(folder)!r}")
    check_content(images, name, split, folder / images_file)
    return Dataset(name, torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), 10, (mean,), (std,))


@register_dataset("mnist")
def load_mnist(data_dir, split: str) -> Dataset:
    """MNIST: 60k train / 10k test, 28x28 grey.

    Raises:
        SnnconvError: no ``data_dir``; an idx file is missing, not gzip, truncated, or has
            the wrong magic number; images and labels disagree in count; or the files hold the
            other dataset (MNIST for Fashion-MNIST or the reverse, see :func:`check_content`).
    """
    return _load(data_dir, split, "MNIST", 0.1307, 0.3081)


@register_dataset("fashion_mnist")
def load_fashion_mnist(data_dir, split: str) -> Dataset:
    """Fashion-MNIST: 60k train / 10k test, 28x28 grey.

    Raises:
        SnnconvError: no ``data_dir``; an idx file is missing, not gzip, truncated, or has
            the wrong magic number; images and labels disagree in count; or the files hold the
            other dataset (MNIST for Fashion-MNIST or the reverse, see :func:`check_content`).
    """
    return _load(data_dir, split, "FashionMNIST", 0.2860, 0.3530)

"""CIFAR-10 and CIFAR-100 from the official python-pickle folders (exact pixels).

Layouts (``--data-dir`` may be the folder itself or its parent)::

    cifar-10-batches-py/  data_batch_1 .. data_batch_5, test_batch
    cifar-100-python/     train, test            (labels: ``fine_labels``, 100 classes)

``snnconv train --download`` fetches and md5-checks the official archives
(:mod:`snnconv.data.downloads`). The batches are pickles; they are read with a
restricted unpickler that cannot run code (:mod:`snnconv.data.safe_pickle`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import SnnconvError
from .registry import Dataset, register_dataset
from .safe_pickle import load_pickle

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}

# Per-channel statistics of the training images on the 0..1 scale (the usual published values).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _folder(data_dir: Path | None, name: str, folder: str, probe: str) -> Path:
    if data_dir is None:
        raise SnnconvError(f"dataset {name!r} needs --data-dir: the folder holding {folder}/ (or add --download to fetch it there)")
    for candidate in (data_dir / folder, data_dir):
        if (candidate / probe).is_file():
            return candidate
    hint = " (the CIFAR-10 JPEG npz is dataset 'cifar10_jpeg')" if (data_dir / "cifar10_jpeg_q75_fullorder.npz").is_file() else ""
    raise SnnconvError(f"no {folder}/{probe} under {str(data_dir)!r}{hint}: extract the official archive there, or add --download")


def _read_batch(path: Path, label_key: str, num_classes: int, fix: str) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path, fix)
    if not isinstance(batch, dict):
        raise SnnconvError(f"{str(path)!r} holds a {type(batch).__name__}, not a CIFAR batch dict: {fix}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise SnnconvError(f"{str(path)!r} has no 'data'/{label_key!r} entries ({sorted(map(str, batch))}): not a CIFAR batch; {fix}")
    data, labels = batch["data"], np.asarray(batch[label_key])
    # The dtype check also keeps object arrays (whose items could be anything) out.
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise SnnconvError(f"{str(path)!r}: 'data' is not a uint8 [N, 3072] array: not a CIFAR batch; {fix}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu" or labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
        raise SnnconvError(f"{str(path)!r}: {label_key!r} must be {data.shape[0]} integers in 0..{num_classes - 1}; {fix}")
    return data, labels.astype(np.int64)


def _load(data_dir: Path | None, split: str, name: str, folder: str, files: dict, label_key: str, num_classes: int,
          mean: tuple[float, ...], std: tuple[float, ...]) -> Dataset:
    root = _folder(data_dir, name, folder, files["test"][0])
    fix = f"extract the official {name} archive again (or delete {folder}/ and run with --download)"
    parts = [_read_batch(root / f, label_key, num_classes, fix) for f in files[split]]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32.
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return Dataset(name, images, torch.from_numpy(labels), num_classes, mean, std, flip=True)


@register_dataset("cifar10")
def load_cifar10(data_dir: Path | None, split: str) -> Dataset:
    """CIFAR-10: 50k train / 10k test, 32x32 RGB, exact pixels from ``cifar-10-batches-py``.

    Raises:
        SnnconvError: no ``data_dir``; the batch files are missing; a file is truncated,
            corrupt or a pickle that would run code (refused, nothing executed); or a batch
            does not hold ``data`` uint8 ``[N, 3072]`` and valid labels. Each names the file
            and the fix (extract the official archive, or ``--download``).
    """
    return _load(data_dir, split, "cifar10", CIFAR10_FOLDER, CIFAR10_FILES, "labels", 10, CIFAR10_MEAN, CIFAR10_STD)


@register_dataset("cifar100")
def load_cifar100(data_dir: Path | None, split: str) -> Dataset:
    """CIFAR-100: 50k train / 10k test, 32x32 RGB, the 100 fine labels, from ``cifar-100-python``.

    Raises:
        SnnconvError: no ``data_dir``; the batch files are missing; a file is truncated,
            corrupt or a pickle that would run code (refused, nothing executed); or a batch
            does not hold ``data`` uint8 ``[N, 3072]`` and valid labels. Each names the file
            and the fix (extract the official archive, or ``--download``).
    """
    return _load(data_dir, split, "cifar100", CIFAR100_FOLDER, CIFAR100_FILES, "fine_labels", 100, CIFAR100_MEAN, CIFAR100_STD)

"""Dataset registry: one registered loader per dataset, returning device-ready tensors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import SnnconvError
from ..registry import Registry


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 images ``[N, C, H, W]`` as float ``(x / 255 - mean) / std`` on ``device``
    (the copy to the device is the uint8 one: four times less traffic)."""
    x = images.to(device).float().div_(255)
    mean_ = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_ = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return x.sub_(mean_).div_(std_)


@dataclass
class Dataset:
    """A whole split held as tensors (small enough for memory, as all ours are).

    images: uint8 ``[N, C, H, W]``; labels: int64 ``[N]``; mean/std per channel on the
    0..1 scale; ``flip``: horizontal flips are a valid augmentation (not for digits).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = False

    def normalized(self, index: slice | torch.Tensor | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images as float ``(x / 255 - mean) / std``, optionally a subset, on ``device``."""
        return normalize(self.images if index is None else self.images[index], self.mean, self.std, device)

    def __len__(self) -> int:
        return self.labels.shape[0]


Loader = Callable[[Path | None, str], Dataset]
_DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(data_dir, split) -> Dataset`` under ``name``.

    Raises:
        SnnconvError: a dataset of that name is already registered (the message names where).
    """
    return _DATASETS.register(name)


def list_datasets(pattern: str = "*") -> list[str]:
    """Names of the registered datasets matching the ``fnmatch`` wildcard ``pattern``, sorted."""
    return _DATASETS.names(pattern)


def split_and_folder(split: str, data_dir: str | Path | None) -> Path | None:
    """Check a split name and a data folder given by the user; the folder as a Path (or None).

    Raises:
        SnnconvError: ``split`` is not "train" or "test", or ``data_dir`` is not a folder.
    """
    if split not in ("train", "test"):
        raise SnnconvError(f"split must be 'train' or 'test', got {split!r}")
    path = None if data_dir is None else Path(data_dir)
    if path is not None and not path.is_dir():
        raise SnnconvError(f"data directory {str(path)!r} does not exist: pass --data-dir pointing at the dataset folder")
    return path


def load_dataset(name: str | Loader, split: str, data_dir: str | Path | None = None) -> Dataset:
    """Load split ``"train"`` or ``"test"`` of dataset ``name`` (a name or the registered loader) from ``data_dir``.

    Raises:
        SnnconvError: the dataset is not registered, the split or folder is wrong, or
            the loader cannot read the files.
    """
    loader = _DATASETS.get(name)
    return loader(split_and_folder(split, data_dir), split)

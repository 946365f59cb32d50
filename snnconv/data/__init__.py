"""Dataset registry (importing registers the loaders; nothing is downloaded)."""
from . import cifar, cifar_jpeg, digits, idx, image_folder, nmnist  # noqa: F401  (registration)
from .downloads import download
from .registry import Dataset, list_datasets, load_dataset, register_dataset

__all__ = ["Dataset", "download", "list_datasets", "load_dataset", "register_dataset"]

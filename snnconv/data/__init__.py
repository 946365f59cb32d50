"""Dataset registry (importing registers the loaders; nothing is downloaded)."""
from . import cifar_jpeg, digits, idx  # noqa: F401  (registration)
from .registry import Dataset, list_datasets, load_dataset, register_dataset

__all__ = ["Dataset", "list_datasets", "load_dataset", "register_dataset"]

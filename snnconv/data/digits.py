"""scikit-learn's bundled 8x8 digits: runs anywhere, no download."""
from __future__ import annotations

import numpy as np
import torch

from .registry import Dataset, register_dataset

_TEST_FRACTION = 0.25
_SPLIT_SEED = 0


@register_dataset("digits")
def load_digits(data_dir, split: str) -> Dataset:
    """1,797 images (values 0..16 scaled to 0..255), a fixed stratified 75/25 split.

    Raises:
        Nothing (the data ship with scikit-learn).
    """
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    bunch = sk_load()
    images = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)
    index = np.arange(len(images))
    train, test = train_test_split(index, test_size=_TEST_FRACTION, random_state=_SPLIT_SEED, stratify=bunch.target)
    chosen = train if split == "train" else test
    return Dataset(
        "digits",
        torch.from_numpy(images[chosen]).unsqueeze(1),
        torch.from_numpy(bunch.target[chosen]).long(),
        10,
        (0.30,),
        (0.38,),
    )

"""Session fixtures: a trained digits source."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_source(tmp_path_factory):
    """A small QCFS (L = 4) CNN trained on digits for 20 epochs, and the test split."""
    from snnconv.data import load_dataset
    from snnconv.train import TrainConfig, train

    out = tmp_path_factory.mktemp("digits")
    config = TrainConfig(model="small_cnn", dataset="digits", activation="qcfs", levels=4, epochs=20, batch_size=64, seed=0)
    model, meta = train(config, out, progress=False, log=lambda m: None)
    test = load_dataset("digits", "test")
    return model, meta, test.normalized(), test.labels, out / "checkpoint.safetensors"

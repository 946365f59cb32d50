"""The out-of-the-box demo: QCFS source on scikit-learn digits, converted with IF."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .data import load_dataset
from .evaluate import RunSpec, evaluate_classification
from .experiments import format_table
from .files import write_json
from .metrics import accuracy
from .train import TrainConfig, train

DEMO_STEPS = [1, 2, 4, 8, 16, 32]


def run_demo(json_path: str | Path | None = None, epochs: int = 30, seed: int = 0, log=print) -> dict:
    """Train a small QCFS CNN (L = 4) on digits, convert with IF, report accuracy at T = 1..32.

    Deterministic: the seeds fix the weights, batch order and augmentation, and the run
    uses one CPU thread (restored afterwards), because the intra-op thread count can change
    the order of floating-point sums in the convolutions' gradients, and so the trained
    network, from one machine to another. The README's table is this function's output
    (``tests/test_measured.py`` checks it).

    Raises:
        SnnconvError: an unwritable ``json_path``, or ``epochs`` below 1.
    """
    config = TrainConfig(model="small_cnn", dataset="digits", activation="qcfs", levels=4, epochs=epochs, batch_size=64, lr=0.05, seed=seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(config, json_path, log)
    finally:
        torch.set_num_threads(threads)


def _run_demo(config: TrainConfig, json_path: str | Path | None, log) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model, meta = train(config, tmp, log=lambda m: None)
    test = load_dataset("digits", "test")
    x, y = test.normalized(), test.labels
    results = {
        "dataset": "digits",
        "model": "small_cnn",
        "ann_accuracy": accuracy(model, x, y),
        "activation": meta["activation"],
        "samples": len(y),
        "runs": [evaluate_classification(model, x, y, RunSpec("if", DEMO_STEPS), progress=True).record],
    }
    log(format_table(results))
    if json_path is not None:
        write_json(json_path, results)
    return results

"""The model zoo: every shipped checkpoint loads, its card matches its metadata, and a
slice of its published table is reproduced (skipped where ../shared/data is absent)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from snnconv import SnnconvError, convert, simulate
from snnconv.checkpoint import read_checkpoint
from snnconv.data import load_dataset
from snnconv.metrics import running_average
from snnconv.zoo import ZOO_DIR, list_pretrained, load_pretrained, pretrained_path

from helpers import shared_data

ENTRIES = list_pretrained()


def test_unknown_zoo_name_is_one_clear_line():
    with pytest.raises(SnnconvError, match="no pretrained source named 'resnet99'.*checkpoint file"):
        pretrained_path("resnet99")
    with pytest.raises(SnnconvError, match="no pretrained source named 'resnet99': choose one of"):
        read_checkpoint("resnet99")


def test_load_pretrained_on_a_file_names_load_checkpoint():
    """A checkpoint written by `snnconv train` is not a zoo name: the error says which function loads it."""
    with pytest.raises(SnnconvError, match=r"no pretrained source named 'runs/x/checkpoint.safetensors': choose one of .*, "
                                           r"or load a checkpoint file with snnconv\.checkpoint\.load_checkpoint\('runs/x/checkpoint\.safetensors'\)$"):
        load_pretrained("runs/x/checkpoint.safetensors")


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_loads_and_its_card_matches_its_metadata(name):
    model, meta = load_pretrained(name)
    assert meta["epochs_done"] == meta["train_config"]["epochs"]  # a finished run, not a snapshot
    card = json.loads((ZOO_DIR / name / "card.json").read_text())
    assert card["epochs_done"] == meta["epochs_done"]
    # The card re-measures in float32 with contiguous tensors; training evaluated channels-last,
    # whose kernels round differently: at most 2 of the 10,000 images may change class.
    assert card["cifar10_jpeg_test"]["ann_accuracy"] == pytest.approx(meta["ann_accuracy"], abs=2e-4)
    if meta.get("clip_limit_accuracy") is not None:
        assert card["cifar10_jpeg_test"]["clip_limit_accuracy"] == pytest.approx(meta["clip_limit_accuracy"], abs=2e-4)
    text = (ZOO_DIR / name / "card.md").read_text()
    assert f"{100 * meta['ann_accuracy']:.2f}%" in text and card["command"] in text
    if meta["activation"]["kind"] == "qcfs":  # the QCFS recipe's promise (README "The QCFS recipe"):
        assert meta["clip_limit_accuracy"] >= meta["ann_accuracy"] - 0.01  # IF's limit no more than a point below


@pytest.mark.parametrize("name", ENTRIES)
@torch.no_grad()
def test_entry_reproduces_its_exact_conversion_on_500_test_images(name):
    """QCFS: GN tau = L at T = 1 gives the ANN's logits; clip-floor: CIF + wake-sleep does
    after its sleep steps; ReLU: IF with 99.9% thresholds approaches the ANN by T = 256."""
    model, meta = load_pretrained(name)
    test = load_dataset(meta["dataset"], "test", shared_data("cifar10"))
    x = test.normalized(slice(0, 500))
    logits = model(x)
    kind, levels = meta["activation"]["kind"], meta["activation"].get("levels")
    if kind == "qcfs":
        # float64: the ANN's logits exactly. float32: BN folding reorders the arithmetic, so a
        # pre-activation within rounding of a level boundary can land one level off (measured:
        # 7 of these 500 images, the same class for all), hence a class check there.
        model64 = copy.deepcopy(model).double()
        out64 = simulate(convert(model64, "gn", group_size=levels), x.double(), 1)[0]
        assert torch.allclose(out64, model64(x.double()), atol=1e-9)
        out = simulate(convert(model, "gn", group_size=levels), x, 1)[0]
        assert (out.argmax(1) == logits.argmax(1)).float().mean() >= 0.99
    elif kind == "clipfloor":
        # As for QCFS: exact in float64; in float32 a floor input within rounding of a level
        # boundary may land one level off (measured: 2 of these 100 images, same class).
        model64 = copy.deepcopy(model).double()
        readout64 = running_average(simulate(convert(model64, "cif"), x[:100].double(), levels, sleep_steps=28), levels)[-1]
        assert torch.allclose(readout64, model64(x[:100].double()), atol=1e-9)
        readout = running_average(simulate(convert(model, "cif"), x[:100], levels, sleep_steps=28), levels)[-1]
        assert (readout.argmax(1) == logits[:100].argmax(1)).float().mean() >= 0.99
    else:
        calibration = load_dataset(meta["dataset"], "train", shared_data("cifar10")).normalized(slice(0, 512))
        # Not exact: IF's error shrinks as 1/T. Measured on these 100 images: agreement with
        # the ANN's class 0.94 / 0.98 (30-epoch source) and 0.89 / 0.99 (fine-tuned from the
        # QCFS source, whose first layers' thresholds sit further out) at T = 64 / 256.
        average = simulate(convert(model, "if", calibration=calibration), x[:100], 256).cumsum(0)
        agree = [(average[t - 1].argmax(1) == logits[:100].argmax(1)).float().mean() for t in (64, 256)]
        assert agree[0] <= agree[1] and agree[1] >= 0.97

"""Train a source detector: AdamW, warm-up + cosine schedule, resumable atomic checkpoints.

Every epoch ends with an atomic checkpoint (weights, AdamW state, JSON metadata). All
randomness of epoch e comes from a generator seeded with (seed, e), so a run resumed
from the checkpoint of epoch e continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..activations import QuantizedClip
from ..checkpoint import read_checkpoint, save_checkpoint
from ..errors import SnnconvError, check
from ..models import create_model
from ..train import check_schedule, resolve_device
from .boxes import postprocess
from .dataset import DetectionDataset, load_detection_dataset
from .loss import detection_loss
from .metrics import detection_map

CHECKPOINT_NAME = "checkpoint.safetensors"
TASK = "detection"


@dataclass
class DetectTrainConfig:
    """Everything that defines a detection training run (stored in the checkpoint)."""

    model: str = "yolo_detector"
    dataset: str = "mnist_detection"
    dataset_args: dict = field(default_factory=dict)
    activation: str = "qcfs"
    levels: int = 4
    backbone: str = "vgg"
    width: int = 16
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    flip: bool = False
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        check_schedule(self)
        check(0 <= self.warmup_fraction < 1, f"warm-up fraction must be in [0, 1), got {self.warmup_fraction}")


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv weights only: not on BN, biases or the clip values lambda."""
    thresholds = {id(m.threshold) for m in model.modules() if isinstance(m, QuantizedClip)}
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1 and id(p) not in thresholds]
    rest = [p for p in model.parameters() if p.requires_grad and not (p.dim() > 1 and id(p) not in thresholds)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW state as flat tensors ``"{param index}.{key}"`` (step, exp_avg, exp_avg_sq)."""
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{index}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    return out


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state = optimizer.state_dict()
    restored: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, _, key = name.partition(".")
        restored.setdefault(int(index), {})[key] = value
    state["state"] = restored
    optimizer.load_state_dict(state)


def flip_batch(x: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each image ``[B, C, H, W]`` and its boxes ``[B, M, 4]`` horizontally with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator).to(x.device) < 0.5
    width = x.shape[-1]
    flipped = torch.stack([width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]], -1)
    keep_padding = (labels < 0)[..., None]
    flipped = torch.where(keep_padding, boxes, flipped)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x), torch.where(flip.view(-1, 1, 1), flipped, boxes)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256, **postprocess_options) -> list[dict[str, torch.Tensor]]:
    """Detections of ``model`` (eval mode) on images ``[N, C, H, W]``: one dict per image."""
    model.eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        out += postprocess(model(x[start : start + batch_size]).float(), model.stride, **postprocess_options)
    return out


def ann_map(model: nn.Module, dataset: DetectionDataset, x: torch.Tensor) -> dict[str, float]:
    """mAP@0.5 and mAP@[.5:.95] of the ANN on normalised images ``x`` of ``dataset``."""
    return detection_map(predict(model, x), dataset.targets(slice(0, x.shape[0])), dataset.num_classes)


def train_detector(config: DetectTrainConfig, out_dir: str | Path, data_dir: str | Path | None = None, progress: bool = True,
                   log=print) -> tuple[nn.Module, dict]:
    """Train (or resume) a source detector; writes ``out_dir/checkpoint.safetensors`` every epoch.

    Returns the trained model (eval mode) and the checkpoint metadata, which holds the
    test-split ``ann_map50`` and ``ann_map`` after the last epoch.
    """
    config.validate()
    device = resolve_device(config.device)
    out_dir = Path(out_dir)
    train_set = load_detection_dataset(config.dataset, "train", data_dir, **config.dataset_args)
    test_set = load_detection_dataset(config.dataset, "test", data_dir, **config.dataset_args)
    torch.manual_seed(config.seed)
    model_args = {"num_classes": train_set.num_classes, "in_channels": train_set.images.shape[1], "activation": config.activation,
                  "levels": config.levels, "backbone": config.backbone, "width": config.width}
    model = create_model(config.model, **model_args).to(device)
    check(hasattr(model, "stride"), f"model {config.model!r} is not a detector (it has no grid 'stride')")
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    start_epoch, history = 0, []
    checkpoint = out_dir / CHECKPOINT_NAME
    if checkpoint.exists():
        meta, state, optim_state = read_checkpoint(checkpoint)
        saved, wanted = dict(meta.get("train_config", {})), asdict(config)
        saved.pop("device", None), wanted.pop("device")  # a run may resume on another device
        if meta.get("task") != TASK:
            raise SnnconvError(f"{str(checkpoint)!r} is not a detection checkpoint: use another --out")
        differing = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        if differing:
            fields = ", ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {wanted.get(k)!r} now" for k in differing)
            raise SnnconvError(f"{str(checkpoint)!r} was written by a different training configuration ({fields}): "
                               "pass the checkpoint's values to resume it, or use another --out")
        model.load_state_dict(state)
        _restore_optimizer(optimizer, optim_state)
        start_epoch, history = meta["epochs_done"], meta.get("history", [])
        log(f"resuming from epoch {start_epoch} of {config.epochs}")
    x_train = train_set.normalized(device=device)
    boxes, labels, ignore = (t.to(device) for t in (train_set.boxes, train_set.labels, train_set.ignore))
    x_test = test_set.normalized(device=device)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(config.warmup_fraction * total_steps))
    meta: dict = {}
    for epoch in range(start_epoch, config.epochs):
        model.train()
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(train_set), generator=generator).to(device)
        batches = range(steps_per_epoch)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        for b in batches:
            step = epoch * steps_per_epoch + b
            scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = config.lr * scale
            index = order[b * config.batch_size : (b + 1) * config.batch_size]
            x, batch_boxes = x_train[index], boxes[index]
            if config.flip:
                x, batch_boxes = flip_batch(x, batch_boxes, labels[index], generator)
            loss, _ = detection_loss(model(x), batch_boxes, labels[index], ignore[index], model.stride)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scores = ann_map(model, test_set, x_test)
        history.append({"epoch": epoch + 1, "test_map50": scores["map50"], "test_map": scores["map"]})
        log(f"epoch {epoch + 1}/{config.epochs}: test mAP@0.5 {scores['map50']:.4f}, mAP@[.5:.95] {scores['map']:.4f}")
        meta = {
            "task": TASK,
            "model": config.model,
            "model_args": model_args,
            "dataset": config.dataset,
            "dataset_args": dict(config.dataset_args),
            "class_names": train_set.class_names,
            "activation": {"kind": config.activation, "levels": config.levels},
            "train_config": asdict(config),
            "epochs_done": epoch + 1,
            "history": history,
            "ann_map50": scores["map50"],
            "ann_map": scores["map"],
            "ann_accuracy": scores["map50"],  # the classifiers' key: mAP@0.5 for detectors
        }
        save_checkpoint(checkpoint, model, meta, _optimizer_tensors(optimizer))
    if not meta:  # already complete: nothing trained in this call
        meta, _, _ = read_checkpoint(checkpoint)
    return model.eval(), meta

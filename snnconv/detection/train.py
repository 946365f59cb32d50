"""Train a source detector: AdamW, warm-up + cosine schedule, resumable atomic checkpoints.

:class:`DetectionTask` supplies the detection data, model, optimizer, schedule, loss and
mAP evaluation to the shared loop :func:`snnconv.training.run_training`, which owns
resume, atomic checkpoints (weights, AdamW state, JSON metadata), the clean-up of stale
temporaries, seeds and DDP, exactly as for the classifier.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..activations import QuantizedClip
from ..errors import SnnconvError, check
from ..models import create_model
from ..train import check_schedule
from ..training.loop import CHECKPOINT_NAME, TrainingTask, run_training  # noqa: F401  (CHECKPOINT_NAME: the old name)
from .boxes import postprocess
from .dataset import DetectionDataset, load_detection_dataset
from .loss import detection_loss
from .metrics import detection_map

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

    # Options that change speed, not the run: a checkpoint may be resumed with others.
    PERFORMANCE_OPTIONS = ("device",)

    def validate(self) -> None:
        """Raises:
            SnnconvError: a value out of range (see :func:`snnconv.train.check_schedule`)
                or a warm-up fraction outside [0, 1).
        """
        check_schedule(self)
        check(0 <= self.warmup_fraction < 1, f"warm-up fraction must be in [0, 1), got {self.warmup_fraction}")


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv weights only: not on BN, biases or the clip values lambda."""
    thresholds = {id(m.threshold) for m in model.modules() if isinstance(m, QuantizedClip)}
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1 and id(p) not in thresholds]
    rest = [p for p in model.parameters() if p.requires_grad and not (p.dim() > 1 and id(p) not in thresholds)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


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
    """mAP@0.5 and mAP@[.5:.95] of the ANN on normalised images ``x`` of ``dataset``.

    Raises:
        SnnconvError: pycocotools is not installed (see :func:`detection_map`).
    """
    return detection_map(predict(model, x), dataset.targets(slice(0, x.shape[0])), dataset.num_classes)


class DetectionTask(TrainingTask):
    """Object detection for :func:`snnconv.training.run_training`: a registered detection
    dataset and detector, AdamW with linear warm-up then cosine decay, optional flips,
    :func:`detection_loss`; scored by mAP@0.5 and mAP@[.5:.95] on the test split."""

    def __init__(self, config: DetectTrainConfig) -> None:
        super().__init__(config)
        self.model: nn.Module | None = None
        self.model_args: dict = {}

    def load_data(self, data_dir: str | Path | None) -> None:
        config = self.config
        self.train_set = load_detection_dataset(config.dataset, "train", data_dir, **config.dataset_args)
        self.test_set = load_detection_dataset(config.dataset, "test", data_dir, **config.dataset_args)

    def build_model(self, device: torch.device) -> nn.Module:
        """Raises:
            SnnconvError: the model is not a detector (it has no grid ``stride``).
        """
        config, train_set = self.config, self.train_set
        self.model_args = {"num_classes": train_set.num_classes, "in_channels": train_set.images.shape[1],
                           "activation": config.activation, "levels": config.levels, "backbone": config.backbone,
                           "width": config.width}
        model = create_model(config.model, **self.model_args).to(device)
        check(hasattr(model, "stride"), f"model {config.model!r} is not a detector (it has no grid 'stride')")
        self.model = model
        return model

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(_param_groups(model, self.config.weight_decay), lr=self.config.lr)

    def check_checkpoint(self, meta: dict, path: Path) -> None:
        """Raises:
            SnnconvError: the checkpoint at ``path`` is not a detection checkpoint.
        """
        if meta.get("task") != TASK:
            raise SnnconvError(f"{str(path)!r} is not a detection checkpoint: use another --out")

    def move_data(self, device: torch.device) -> int:
        train_set = self.train_set
        self.x_train = train_set.normalized(device=device)
        self.boxes, self.labels, self.ignore = (t.to(device) for t in (train_set.boxes, train_set.labels, train_set.ignore))
        self.x_test = self.test_set.normalized(device=device)
        return len(train_set)

    def learning_rate(self, step: int, total_steps: int) -> float:
        """lr0 * (step + 1) / warmup during the warm-up (``warmup_fraction`` of the steps),
        then lr0 * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2."""
        warmup = max(1, int(self.config.warmup_fraction * total_steps))
        scale = ((step + 1) / warmup if step < warmup
                 else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup))))
        return self.config.lr * scale

    def train_step(self, net: nn.Module, optimizer: torch.optim.Optimizer, index: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
        x, batch_boxes = self.x_train[index], self.boxes[index]
        if self.config.flip:
            x, batch_boxes = flip_batch(x, batch_boxes, self.labels[index], generator)
        loss, _ = detection_loss(net(x), batch_boxes, self.labels[index], self.ignore[index], self.model.stride)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def evaluate(self, model: nn.Module) -> dict:
        return ann_map(model, self.test_set, self.x_test)

    def history_record(self, epoch: int, scores: dict, seconds: float, mean_loss: float) -> dict:
        return {"epoch": epoch, "test_map50": scores["map50"], "test_map": scores["map"]}

    def epoch_message(self, epoch: int, scores: dict, seconds: float) -> str:
        return f"epoch {epoch}/{self.config.epochs}: test mAP@0.5 {scores['map50']:.4f}, mAP@[.5:.95] {scores['map']:.4f}"

    def metadata(self, epoch: int, history: list[dict], scores: dict, seconds: float, resumed: dict | None) -> dict:
        config = self.config
        return {
            "task": TASK,
            "model": config.model,
            "model_args": self.model_args,
            "dataset": config.dataset,
            "dataset_args": dict(config.dataset_args),
            "class_names": self.train_set.class_names,
            "activation": {"kind": config.activation, "levels": config.levels},
            "train_config": asdict(config),
            "epochs_done": epoch,
            "history": history,
            "ann_map50": scores["map50"],
            "ann_map": scores["map"],
            "ann_accuracy": scores["map50"],  # the classifiers' key: mAP@0.5 for detectors
        }


def train_detector(config: DetectTrainConfig, out_dir: str | Path, data_dir: str | Path | None = None, progress: bool = True,
                   log=print) -> tuple[nn.Module, dict]:
    """Train (or resume) a source detector; writes ``out_dir/checkpoint.safetensors`` every epoch.

    Returns the trained model (eval mode) and the checkpoint metadata, which holds the
    test-split ``ann_map50`` and ``ann_map`` after the last epoch.

    Raises:
        SnnconvError: a bad configuration, device or ``out_dir`` (before any work), an
            unknown detection dataset or a model that is not a detector, a checkpoint in
            ``out_dir`` from another task or configuration, or a diverging run.
    """
    return run_training(DetectionTask(config), out_dir, data_dir, progress, log)

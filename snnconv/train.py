"""Train a source classifier ANN: SGD + momentum, cosine schedule, batched augmentation, resumable.

:class:`ClassifierTask` supplies the data, model, optimizer, schedule, loss step and
evaluation to the shared loop :func:`snnconv.training.run_training`, which owns resume,
atomic checkpoints, seeds and DDP (see :mod:`snnconv.training.loop`): every epoch ends
with an atomic checkpoint; all randomness of epoch e comes from a generator seeded with
(seed, e), so a resumed run continues exactly as an uninterrupted one would; under
``torchrun`` each of the W ranks takes a disjoint 1/W share of every epoch.

``resolve_device`` (now :mod:`snnconv.device`) and ``accuracy`` (now
:mod:`snnconv.metrics`) are still importable from here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .activations import ACTIVATION_KINDS, QuantizedClip, clip_limit, init_thresholds, keep_thresholds_positive
from .augment import cutout, random_crop, random_flip
from .autoaugment import autoaugment_cifar10, check_autoaugment
from .checkpoint import load_checkpoint
from .data import Dataset, load_dataset
from .device import resolve_device
from .errors import SnnconvError, check
from .metrics import accuracy
from .models import create_model
from .phase_shift import match_shift
from .training.loop import CHECKPOINT_NAME, DivergenceWatch, TrainingTask, run_training

__all__ = ["CHECKPOINT_NAME", "ClassifierTask", "DivergenceWatch", "TrainConfig", "accuracy", "augment_batch", "build_model",
           "check_amp", "check_schedule", "cpu_has_bf16", "extension_note", "resolve_device", "train", "train_step"]


def check_schedule(config) -> None:
    """Checks shared by every training configuration (classifier and detector): the
    activation, levels, epochs, batch size and learning rate.

    Raises:
        SnnconvError: the first value out of range, named with its allowed range.
    """
    check(config.activation in ACTIVATION_KINDS, f"activation must be one of {', '.join(ACTIVATION_KINDS)}, got {config.activation!r}")
    check(isinstance(config.levels, int) and config.levels >= 1, f"levels must be an integer >= 1, got {config.levels!r}")
    check(config.epochs >= 1, f"epochs must be >= 1, got {config.epochs}")
    check(config.batch_size >= 1, f"batch size must be >= 1, got {config.batch_size}")
    check(config.lr > 0, f"learning rate must be > 0, got {config.lr}")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint)."""

    model: str = "small_cnn"
    dataset: str = "digits"
    activation: str = "qcfs"
    levels: int = 4
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_thresholds: bool = True  # lambda under the weights' decay, as in the QCFS authors' code
    # lambda initialised to this percentile of its layer's positive pre-activations on the
    # first training batch (activations.init_thresholds); None keeps the activation's default.
    threshold_percentile: float | None = 85.0
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "cpu"
    model_args: dict = field(default_factory=dict)
    train_limit: int | None = None  # train on the first N training images only (quick sources)
    amp: bool = False  # bf16 autocast (CUDA, or a CPU with native bf16: AVX512-BF16 or AMX)
    channels_last: bool = False  # NHWC memory format for the model and its inputs
    cutout: int = 0  # side of the square Cutout zeroes in each training image (0: off; QCFS authors' CIFAR recipe: 16)
    autoaugment: bool = False  # AutoAugment's CIFAR-10 policy after crop and flip (QCFS authors' CIFAR recipe; needs kornia)
    init_from: str | None = None  # start from this checkpoint's weights (file or zoo name): fine-tuning

    # Options that change speed, not the run: a checkpoint may be resumed with others.
    PERFORMANCE_OPTIONS = ("device", "amp", "channels_last")

    def validate(self) -> None:
        """Raises:
            SnnconvError: a value out of range (see :func:`check_schedule`), label
                smoothing outside [0, 1), a train limit < 1, or a percentile outside (0, 100].
        """
        check_schedule(self)
        check(0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        check(self.train_limit is None or self.train_limit >= 1, f"train limit must be >= 1, got {self.train_limit}")
        check(self.threshold_percentile is None or 0 < self.threshold_percentile <= 100,
              f"the lambda initialisation percentile must be in (0, 100], got {self.threshold_percentile}")
        check(not isinstance(self.cutout, bool) and isinstance(self.cutout, int) and self.cutout >= 0,
              f"cutout must be a whole number of pixels >= 0 (0: off), got {self.cutout!r}")
        check(isinstance(self.autoaugment, bool), f"autoaugment must be True or False, got {self.autoaugment!r}")
        check(self.init_from is None or (isinstance(self.init_from, str) and self.init_from.strip() != ""),
              f"init_from must be a checkpoint path or zoo name, got {self.init_from!r}")


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), where autocast pays off."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def check_amp(device: torch.device) -> None:
    """``--amp`` needs native bf16: any CUDA device, or a CPU with AVX512-BF16 / AMX.

    Raises:
        SnnconvError: any other device (emulated bf16 on such a CPU is slower than fp32).
    """
    if device.type == "cpu" and not cpu_has_bf16():
        raise SnnconvError("--amp (bf16 autocast) needs a GPU or a CPU with native bf16 (AVX512-BF16 or AMX); "
                           "this CPU has neither, so bf16 would be slower than fp32: drop --amp")
    check(device.type in ("cpu", "cuda"), f"--amp supports cpu and cuda devices, not {device.type}: drop --amp")


def build_model(config: TrainConfig, dataset: Dataset) -> tuple[nn.Module, dict]:
    """The registered model ``config.model`` for ``dataset`` (classes, channels) and its arguments.

    Raises:
        SnnconvError: unknown model or arguments (see :func:`snnconv.create_model`).
    """
    args = model_arguments(config, dataset)
    return create_model(config.model, **args), args


def model_arguments(config: TrainConfig, dataset: Dataset) -> dict:
    """The arguments of ``config.model`` for ``dataset``: classes, input channels, activation, L, and ``--model-arg``s."""
    return {"num_classes": dataset.num_classes, "in_channels": dataset.images.shape[1], "activation": config.activation,
            "levels": config.levels, **config.model_args}


def _lambda_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the clip values lambda (one per QCFS / clip-floor activation)."""
    return {f"{name}.threshold" for name, m in model.named_modules() if isinstance(m, QuantizedClip)}


def check_initial_model(source: nn.Module, meta: dict, config: TrainConfig, model_args: dict) -> None:
    """Refuse an ``--init-from`` checkpoint whose network is not this run's, whatever the activation.

    Raises:
        SnnconvError: another registered model, other model arguments (classes, input
            channels, width, ...) or, apart from the lambdas, other weight names or shapes.
    """
    name = config.init_from
    check(meta["model"] == config.model,
          f"--init-from {name} holds a {meta['model']}, not the {config.model} of --model: pass --model {meta['model']} or another checkpoint")
    ours, theirs = ({k: v for k, v in args.items() if k not in ("activation", "levels")} for args in (model_args, meta["model_args"]))
    for key in sorted(ours.keys() | theirs.keys()):
        check(ours.get(key) == theirs.get(key), f"--init-from {name} has {key}={theirs.get(key)!r} where this run needs "
              f"{ours.get(key)!r} (dataset {config.dataset}, model arguments): start from a checkpoint of the same network")


def copy_initial_weights(model: nn.Module, source: nn.Module, name: str) -> bool:
    """Copy every weight and buffer of ``source`` into ``model`` (same network, any
    activation). The clip values lambda come along when both are quantised with the same
    activation sites (QCFS <-> clip-floor, any L); otherwise ``model`` keeps its own.
    Returns whether lambda was copied.

    Raises:
        SnnconvError: apart from the lambdas, a weight in only one of the two models or
            with another shape (checked before anything is copied).
    """
    ours, theirs = model.state_dict(), source.state_dict()
    our_lambdas, their_lambdas = _lambda_keys(model), _lambda_keys(source)
    only_one = sorted((ours.keys() - our_lambdas) ^ (theirs.keys() - their_lambdas))
    check(not only_one, f"--init-from {name}: {', '.join(only_one[:3])} is in only one of the two models: start from a checkpoint of the same network")
    for key in ours.keys() - our_lambdas:
        check(ours[key].shape == theirs[key].shape, f"--init-from {name}: {key} has shape {tuple(theirs[key].shape)} there, "
              f"{tuple(ours[key].shape)} here (another input size?): start from a checkpoint of the same network")
    with_lambdas = bool(our_lambdas) and our_lambdas == their_lambdas
    with torch.no_grad():
        for key, value in ours.items():
            if key not in our_lambdas or with_lambdas:
                value.copy_(theirs[key])
    return with_lambdas


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Weight decay on weights, not on BN/bias, and not on the clip values lambda unless asked."""
    thresholds = {id(m.threshold) for m in model.modules() if isinstance(m, QuantizedClip)}
    decay, no_decay, lambdas = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (lambdas if id(p) in thresholds else decay if p.dim() > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": lambdas, "weight_decay": config.weight_decay if config.decay_thresholds else 0.0},
    ]


def augment_batch(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator, channels_last: bool,
                  cutout_size: int = 0, autoaugment: bool = False,
                  normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> torch.Tensor:
    """Random crop (zero padding ``padding``), when ``flip`` a random horizontal flip, when
    ``autoaugment`` AutoAugment's CIFAR-10 policy (:func:`snnconv.autoaugment.autoaugment_cifar10`),
    and when ``cutout_size`` > 0 Cutout, of a normalised ``[B, C, H, W]`` batch in batched
    tensor ops; channels-last memory format when asked.

    With ``autoaugment`` the batch is taken back to pixels with ``normalization`` = (mean,
    std) first, so the crop pads with black and the policy sees [0, 1] values, then
    normalised again before Cutout: the QCFS authors' CIFAR order (crop, flip, policy,
    to-tensor, normalise, Cutout). Without it the crop pads normalised zeros, as it always
    has. (AutoAugment's and Cutout's draws come last, so runs without them draw exactly
    what they drew before they existed.)
    """
    if autoaugment:
        mean = torch.tensor(normalization[0], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(normalization[1], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = x * std + mean
    x = random_crop(x, padding, generator)
    if flip:
        x = random_flip(x, generator)
    if autoaugment:
        x = (autoaugment_cifar10(x, generator) - mean) / std
    x = cutout(x, cutout_size, generator)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """One SGD step on the batch ``(x, y)``: forward under bf16 autocast when ``config.amp``,
    cross-entropy (with ``config.label_smoothing``), backward, update. Returns the loss
    (a 0-d tensor on the device: reading it is a host sync, left to the caller)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=config.amp):
        loss = F.cross_entropy(net(x), y, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def extension_note(config: TrainConfig, from_epochs: int) -> str:
    """What extending a finished ``from_epochs`` run to ``config.epochs`` does to the schedule.

    lr(step) = lr0 * (1 + cos(pi * step / total)) / 2 with the *new* total, so epoch
    ``from_epochs + 1`` restarts at lr0 * (1 + cos(pi * from_epochs / epochs)) / 2 (not at
    the 0 where the finished run ended) and decays to 0 at the new last epoch.
    """
    restart = config.lr * 0.5 * (1 + math.cos(math.pi * from_epochs / config.epochs))
    return (f"extending the finished {from_epochs}-epoch run to {config.epochs} epochs: epochs {from_epochs + 1}-{config.epochs} "
            f"follow the cosine schedule of {config.epochs} epochs, so the learning rate restarts at {restart:.4g} (not 0) and "
            f"decays to 0; the weights differ from a run started with --epochs {config.epochs}")




class ClassifierTask(TrainingTask):
    """Image classification for :func:`snnconv.training.run_training`: a registered dataset
    and model, nesterov SGD with a cosine schedule, random crops (and flips), cross-entropy;
    scored by test accuracy and the accuracy of the clip limit (the model at L -> infinity)."""

    extendable = True

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.model: nn.Module | None = None
        self.model_args: dict = {}
        self.initial: tuple[nn.Module, dict] | None = None  # the --init-from model and its metadata
        self.shift_matched = False  # --init-from between QCFS and clip-floor: biases moved by (φ - φ')·λ/L

    def prepare_device(self, device: torch.device) -> None:
        """Raises:
            SnnconvError: ``--amp`` on a device without native bf16 (see :func:`check_amp`).
        """
        if self.config.amp:
            check_amp(device)

    def load_data(self, data_dir: str | Path | None) -> None:
        """The datasets, and first the ``--init-from`` checkpoint (read again on resume, where
        the run's own checkpoint then replaces its weights).

        Raises:
            SnnconvError: an unreadable ``--init-from`` checkpoint (see
                :func:`snnconv.checkpoint.load_checkpoint`), an unknown dataset or bad files,
                or ``--autoaugment`` on images that are not RGB or without kornia (see
                :func:`snnconv.autoaugment.check_autoaugment`).
        """
        if self.config.init_from is not None:
            self.initial = load_checkpoint(self.config.init_from)
        self.train_set = load_dataset(self.config.dataset, "train", data_dir)
        self.test_set = load_dataset(self.config.dataset, "test", data_dir)
        if self.config.autoaugment:
            check_autoaugment(self.train_set.images.shape[1])

    def build_model(self, device: torch.device) -> nn.Module:
        config = self.config
        if self.initial is not None:
            check_initial_model(*self.initial, config, model_arguments(config, self.train_set))
        model, self.model_args = build_model(config, self.train_set)
        copied_lambdas = False
        if self.initial is not None:  # fine-tuning: the weights (and lambda, between quantised sources) of --init-from
            copied_lambdas = copy_initial_weights(model, self.initial[0], config.init_from)
            # QCFS <-> clip-floor: move the biases so the first weights compute the source's function exactly
            self.shift_matched = copied_lambdas and match_shift(model, self.initial[0])
        model.to(device)
        if config.threshold_percentile is not None and not copied_lambdas:  # all overwritten when resuming
            first = torch.randperm(len(self.train_set.labels), generator=torch.Generator().manual_seed(config.seed))[:512]
            init_thresholds(model, self.train_set.normalized(first, device=device), config.threshold_percentile)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        return model

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        config = self.config
        return torch.optim.SGD(_param_groups(model, config), lr=config.lr, momentum=config.momentum, nesterov=True)

    def extension_note(self, from_epochs: int) -> str:
        return extension_note(self.config, from_epochs)

    def move_data(self, device: torch.device) -> int:
        subset = slice(0, self.config.train_limit)
        self.x_train = self.train_set.normalized(subset, device=device)
        self.y_train = self.train_set.labels[subset].to(device)
        self.x_test, self.y_test = self.test_set.normalized(device=device), self.test_set.labels.to(device)
        self.padding = max(1, self.x_train.shape[-1] // 8)
        return len(self.y_train)

    def learning_rate(self, step: int, total_steps: int) -> float:
        """lr(step) = lr0 * (1 + cos(pi * step / total)) / 2."""
        return self.config.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))

    def train_step(self, net: nn.Module, optimizer: torch.optim.Optimizer, index: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
        x = augment_batch(self.x_train[index], self.padding, self.train_set.flip, generator, self.config.channels_last,
                          self.config.cutout, self.config.autoaugment, (self.train_set.mean, self.train_set.std))
        return train_step(net, optimizer, x, self.y_train[index], self.config)

    def after_step(self, model: nn.Module) -> None:
        keep_thresholds_positive(model, report=False)  # lambda <= 0 could not be converted; no host sync

    def evaluate(self, model: nn.Module) -> dict:
        test_acc = accuracy(model, self.x_test, self.y_test)
        limit = clip_limit(model)
        return {"accuracy": test_acc, "clip_limit_accuracy": None if limit is None else accuracy(limit, self.x_test, self.y_test)}

    def history_record(self, epoch: int, scores: dict, seconds: float, mean_loss: float) -> dict:
        return {"epoch": epoch, "test_accuracy": scores["accuracy"], "clip_limit_accuracy": scores["clip_limit_accuracy"],
                "train_seconds": round(seconds, 1), "mean_loss": mean_loss}

    def epoch_message(self, epoch: int, scores: dict, seconds: float) -> str:
        limit_acc = scores["clip_limit_accuracy"]
        limit_text = "" if limit_acc is None else f", clip limit {limit_acc:.4f}"
        return f"epoch {epoch}/{self.config.epochs}: test accuracy {scores['accuracy']:.4f}{limit_text} ({seconds:.0f} s)"

    def metadata(self, epoch: int, history: list[dict], scores: dict, seconds: float, resumed: dict | None) -> dict:
        config = self.config
        return {
            "model": config.model,
            "model_args": self.model_args,
            "dataset": config.dataset,
            "activation": {"kind": config.activation, "levels": config.levels},
            "train_config": asdict(config),
            "epochs_done": epoch,
            "history": history,
            "ann_accuracy": scores["accuracy"],
            "clip_limit_accuracy": scores["clip_limit_accuracy"],
            "train_seconds": round(seconds, 1),
            "torch": torch.__version__,
            **({"init_from": self.initial_record()} if self.initial is not None else {}),
            **({"schedule_extensions": resumed["schedule_extensions"]} if resumed and "schedule_extensions" in resumed else {}),
        }

    def initial_record(self) -> dict:
        """Where the run's first weights came from (``--init-from``), for the metadata and cards."""
        meta = self.initial[1]
        return {"checkpoint": self.config.init_from, "model": meta["model"], "dataset": meta.get("dataset"),
                "activation": meta.get("activation"), "epochs_done": meta.get("epochs_done"),
                "ann_accuracy": meta.get("ann_accuracy"), "clip_limit_accuracy": meta.get("clip_limit_accuracy"),
                "shift_matched": self.shift_matched}


def train(config: TrainConfig, out_dir: str | Path, data_dir: str | Path | None = None, progress: bool = True, log=print) -> tuple[nn.Module, dict]:
    """Train (or resume) a source classifier; writes ``out_dir/checkpoint.safetensors`` every epoch.

    Returns the trained model (eval mode) and the checkpoint metadata.

    Raises:
        SnnconvError: a bad configuration, device or ``out_dir`` (before any work), an
            unknown dataset or model, a checkpoint in ``out_dir`` from another
            configuration, or a diverging run (see :func:`snnconv.training.run_training`).
    """
    return run_training(ClassifierTask(config), out_dir, data_dir, progress, log)

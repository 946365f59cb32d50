"""Train a source ANN: SGD + momentum, cosine schedule, batched augmentation, resumable.

Every epoch ends with an atomic checkpoint. All randomness of epoch e (shuffling,
augmentation) comes from a generator seeded with (seed, e), so a run resumed from the
checkpoint of epoch e continues exactly as an uninterrupted one would.

Under ``torchrun`` the model is wrapped in DistributedDataParallel and each of the W
ranks takes a disjoint 1/W share of every epoch's permutation (and of every global
batch of ``batch_size``); rank 0 alone reads and writes the checkpoint.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .activations import ACTIVATION_KINDS, QuantizedClip, clip_limit, init_thresholds, keep_thresholds_positive
from .augment import random_crop, random_flip
from .checkpoint import read_checkpoint, save_checkpoint
from .data import Dataset, load_dataset
from .errors import SnnconvError, check
from .files import check_output_folder, remove_stale_temporaries
from .models import create_model

CHECKPOINT_NAME = "checkpoint.safetensors"


def check_schedule(config) -> None:
    """Checks shared by every training configuration (classifier and detector): the
    activation, levels, epochs, batch size and learning rate."""
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

    # Options that change speed, not the run: a checkpoint may be resumed with others.
    PERFORMANCE_OPTIONS = ("device", "amp", "channels_last")

    def validate(self) -> None:
        check_schedule(self)
        check(0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        check(self.train_limit is None or self.train_limit >= 1, f"train limit must be >= 1, got {self.train_limit}")
        check(self.threshold_percentile is None or 0 < self.threshold_percentile <= 100,
              f"the lambda initialisation percentile must be in (0, 100], got {self.threshold_percentile}")


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), where autocast pays off."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def check_amp(device: torch.device) -> None:
    """``--amp`` needs native bf16: any CUDA device, or a CPU with AVX512-BF16 / AMX.

    Raises SnnconvError elsewhere: emulated bf16 on such a CPU is slower than fp32.
    """
    if device.type == "cpu" and not cpu_has_bf16():
        raise SnnconvError("--amp (bf16 autocast) needs a GPU or a CPU with native bf16 (AVX512-BF16 or AMX); "
                           "this CPU has neither, so bf16 would be slower than fp32: drop --amp")
    check(device.type in ("cpu", "cuda"), f"--amp supports cpu and cuda devices, not {device.type}: drop --amp")


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error naming the fix."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SnnconvError("--device cuda asked for, but no CUDA GPU is visible: use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise SnnconvError(f"unknown device {device!r}: use cpu, cuda or auto") from err


def build_model(config: TrainConfig, dataset: Dataset) -> tuple[nn.Module, dict]:
    args = {"num_classes": dataset.num_classes, "in_channels": dataset.images.shape[1], "activation": config.activation, "levels": config.levels}
    args.update(config.model_args)
    return create_model(config.model, **args), args


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


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()["state"]
    return {f"{index}.momentum_buffer": s["momentum_buffer"] for index, s in state.items() if s.get("momentum_buffer") is not None}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state = optimizer.state_dict()
    state["state"] = {int(k.split(".")[0]): {"momentum_buffer": v} for k, v in tensors.items()}
    optimizer.load_state_dict(state)


def _read_resume(checkpoint: Path, config: TrainConfig) -> tuple[dict, dict, dict] | None:
    """The checkpoint to resume from (None when there is none), refusing one from another
    configuration with the differing fields named.

    One change is allowed: more ``epochs`` for a *finished* run. The extra epochs follow
    the cosine schedule of the new total (see :func:`extension_note`), and the returned
    meta records the extension under ``"schedule_extensions"``.
    """
    if not checkpoint.exists():
        return None
    meta, state, optim_state = read_checkpoint(checkpoint)
    # Fields added in later versions take their defaults when an older checkpoint lacks them.
    saved, wanted = {**asdict(TrainConfig()), **meta.get("train_config", {})}, asdict(config)
    for key in TrainConfig.PERFORMANCE_OPTIONS:  # a run may resume on another device, with or without AMP
        saved.pop(key, None), wanted.pop(key, None)
    differing = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
    if differing == ["epochs"]:
        done, planned = meta.get("epochs_done", 0), saved["epochs"]
        if done < planned:
            raise SnnconvError(f"{str(checkpoint)!r} holds a run stopped at epoch {done} of {planned}: resume it with "
                               f"--epochs {planned} (its cosine schedule is fixed by that total), then extend it, or use another --out")
        if config.epochs < done:
            raise SnnconvError(f"{str(checkpoint)!r} holds a finished {done}-epoch run; --epochs {config.epochs} would shorten it: "
                               f"pass --epochs {done} or more, or use another --out")
        extension = {"from_epochs": done, "to_epochs": config.epochs}
        return {**meta, "schedule_extensions": [*meta.get("schedule_extensions", []), extension]}, state, optim_state
    if differing:
        fields = ", ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {wanted.get(k)!r} now" for k in differing)
        raise SnnconvError(f"{str(checkpoint)!r} was written by a different training configuration ({fields}): "
                           "pass the checkpoint's values to resume it, or use another --out")
    return meta, state, optim_state


def augment_batch(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator, channels_last: bool) -> torch.Tensor:
    """Random crop (zero padding ``padding``) and, when ``flip``, random horizontal flip of a
    ``[B, C, H, W]`` batch, in batched tensor ops; channels-last memory format when asked."""
    x = random_crop(x, padding, generator)
    if flip:
        x = random_flip(x, generator)
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


class DivergenceWatch:
    """Stops training at the first non-finite loss, before a checkpoint of NaN weights is written.

    ``record`` keeps the first bad step and its loss on the device (no host sync per step);
    ``check`` (every 50 steps and before each checkpoint, at the same steps on every rank)
    reads it, also checks the weights and BN statistics, and raises one
    :class:`SnnconvError` naming the epoch, the step and the likely cause. The previous
    epoch's checkpoint, if any, is left as it is.
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int, checkpoint: Path) -> None:
        self.config, self.steps_per_epoch, self.checkpoint = config, steps_per_epoch, checkpoint
        self.first: torch.Tensor | None = None  # [step, loss] of the first non-finite loss; step -1: none yet

    def record(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().float()
        if self.first is None:
            self.first = torch.tensor([-1.0, 0.0], device=loss.device)
        bad = ~torch.isfinite(loss) & (self.first[0] < 0)  # device ops only: a fill, not a host-to-device copy
        self.first = torch.where(bad, torch.stack([loss.new_full((), float(step)), loss]), self.first)

    def check(self, model: nn.Module, epoch: int, end_of_epoch: bool = False) -> None:
        found = None if self.first is None else self.first.tolist()
        weights_bad = end_of_epoch and not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
                                               if t.is_floating_point())
        reports = distributed.gather_objects((found if found and found[0] >= 0 else None, weights_bad))
        bad_steps = [r[0] for r in reports if r[0] is not None]
        if not bad_steps and not any(r[1] for r in reports):
            return
        cfg = self.config
        kept = (f"the checkpoint of epoch {epoch} in {str(self.checkpoint)!r} is kept" if epoch > 0 and self.checkpoint.exists()
                else "no checkpoint was written")
        cause = (f"the learning rate is likely too high (--lr {cfg.lr:g}): lower --lr" + (" or drop --amp" if cfg.amp else "")
                 + f"; {kept}")
        if bad_steps:
            step, value = min(bad_steps)
            within = int(step) - epoch * self.steps_per_epoch + 1
            raise SnnconvError(f"training diverged: the loss became {value} at epoch {epoch + 1}, step {within} of "
                               f"{self.steps_per_epoch}; {cause}")
        raise SnnconvError(f"training diverged: the weights became non-finite during epoch {epoch + 1}; {cause}")


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode.

    Under torchrun each rank scores the batches ``rank, rank + W, ...`` and the counts
    are summed, so every rank returns the single-process number.
    """
    model.eval()
    starts = range(0, len(y), batch_size)
    correct = sum(int((model(x[starts[i] : starts[i] + batch_size]).argmax(1) == y[starts[i] : starts[i] + batch_size]).sum())
                  for i in distributed.shard_indices(len(starts)))
    return distributed.sum_int(correct) / max(1, len(y))


def train(config: TrainConfig, out_dir: str | Path, data_dir: str | Path | None = None, progress: bool = True, log=print) -> tuple[nn.Module, dict]:
    """Train (or resume) a source ANN; writes ``out_dir/checkpoint.safetensors`` every epoch.

    Returns the trained model (eval mode) and the checkpoint metadata.
    """
    config.validate()
    device = distributed.setup(resolve_device(config.device))
    if config.amp:
        check_amp(device)
    world, rank = distributed.world_size(), distributed.rank()
    if rank != 0:  # rank 0 speaks for the run
        log, progress = (lambda message: None), False
    out_dir = Path(out_dir)
    distributed.run_on_main(lambda: check_output_folder(out_dir))  # before any work: a read-only --out fails now
    train_set = load_dataset(config.dataset, "train", data_dir)
    test_set = load_dataset(config.dataset, "test", data_dir)
    torch.manual_seed(config.seed)
    model, model_args = build_model(config, train_set)
    model.to(device)
    if config.threshold_percentile is not None:  # overwritten below when resuming
        first = torch.randperm(len(train_set.labels), generator=torch.Generator().manual_seed(config.seed))[:512]
        init_thresholds(model, train_set.normalized(first, device=device), config.threshold_percentile)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(_param_groups(model, config), lr=config.lr, momentum=config.momentum, nesterov=True)
    start_epoch, history, seconds = 0, [], 0.0
    checkpoint = out_dir / CHECKPOINT_NAME
    remove_stale_temporaries(checkpoint)  # left by a run killed mid-write; never read
    resumed = distributed.run_on_main(lambda: _read_resume(checkpoint, config))
    if resumed is not None:
        meta, state, optim_state = resumed
        model.load_state_dict(state)
        _restore_optimizer(optimizer, optim_state)
        start_epoch, history = meta["epochs_done"], meta.get("history", [])
        seconds = meta.get("train_seconds", 0.0)
        log(f"resuming from epoch {start_epoch} of {config.epochs}")
        if meta.get("schedule_extensions", [{}])[-1].get("from_epochs") == start_epoch:
            log(extension_note(config, start_epoch))
    subset = slice(0, config.train_limit)
    x_train = train_set.normalized(subset, device=device)
    y_train = train_set.labels[subset].to(device)
    x_test, y_test = test_set.normalized(device=device), test_set.labels.to(device)
    check(len(y_train) >= world, f"{len(y_train)} training images cannot be shared by {world} processes: use fewer")
    # Each rank: an equal share of every permutation (the last N mod W images of it sit out
    # that epoch) in batches of ceil(batch_size / W), so all ranks take the same number of
    # equal-sized steps and DDP's averaged gradient is the gradient of the global batch.
    per_rank, local_batch = len(y_train) // world, math.ceil(config.batch_size / world)
    steps_per_epoch = math.ceil(per_rank / local_batch)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    total_steps = steps_per_epoch * config.epochs
    padding = max(1, x_train.shape[-1] // 8)
    meta = {}
    watch = DivergenceWatch(config, steps_per_epoch, checkpoint)
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        net.train()
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)  # layers drawing from the global RNG (dropout) resume too
        order = torch.randperm(len(y_train), generator=generator).to(device)[rank::world][:per_rank]
        # One process: the same generator shuffles and augments (as always). Several: the
        # shared permutation above, then a per-rank stream so ranks augment differently.
        augment = generator if world == 1 else torch.Generator().manual_seed((config.seed * 100_003 + epoch) * 1_000_003 + rank)
        batches = range(steps_per_epoch)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        loss_sum = 0.0
        for b in batches:
            step = epoch * steps_per_epoch + b
            for group in optimizer.param_groups:
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            index = order[b * local_batch : (b + 1) * local_batch]
            x = augment_batch(x_train[index], padding, train_set.flip, augment, config.channels_last)
            loss = train_step(net, optimizer, x, y_train[index], config)
            keep_thresholds_positive(model, report=False)  # lambda <= 0 could not be converted; no host sync
            loss_sum += float(loss) if b % 50 == 0 else 0.0  # a host sync every 50 steps only
            watch.record(loss, step)
            if b % 50 == 0 or b == steps_per_epoch - 1:
                watch.check(model, epoch, end_of_epoch=b == steps_per_epoch - 1)
        distributed.broadcast_buffers(model)  # BN statistics: rank 0's, the ones the checkpoint keeps
        seconds += time.perf_counter() - started  # training time; the two evaluations below are not counted
        test_acc = accuracy(model, x_test, y_test)
        limit = clip_limit(model)
        limit_acc = None if limit is None else accuracy(limit, x_test, y_test)
        history.append({"epoch": epoch + 1, "test_accuracy": test_acc, "clip_limit_accuracy": limit_acc,
                        "train_seconds": round(seconds, 1), "mean_loss": loss_sum / max(1, math.ceil(steps_per_epoch / 50))})
        limit_text = "" if limit_acc is None else f", clip limit {limit_acc:.4f}"
        log(f"epoch {epoch + 1}/{config.epochs}: test accuracy {test_acc:.4f}{limit_text} ({seconds:.0f} s)")
        meta = {
            "model": config.model,
            "model_args": model_args,
            "dataset": config.dataset,
            "activation": {"kind": config.activation, "levels": config.levels},
            "train_config": asdict(config),
            "epochs_done": epoch + 1,
            "history": history,
            "ann_accuracy": test_acc,
            "clip_limit_accuracy": limit_acc,
            "train_seconds": round(seconds, 1),
            "torch": torch.__version__,
            **({"schedule_extensions": resumed[0]["schedule_extensions"]} if resumed and "schedule_extensions" in resumed[0] else {}),
        }
        if rank == 0:
            save_checkpoint(checkpoint, model, meta, _optimizer_tensors(optimizer))
    if not meta:  # already complete: nothing trained in this call
        meta = resumed[0]
    distributed.barrier()  # the last checkpoint is on disk before any rank returns
    return model.eval(), meta

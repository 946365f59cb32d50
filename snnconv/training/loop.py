"""One resumable training loop for every task: resume, atomic checkpoints, seeds and DDP.

A task (:class:`TrainingTask`: the classifier in :mod:`snnconv.train`, the detector in
:mod:`snnconv.detection.train`) supplies its data, model, optimizer, learning-rate
schedule, loss step and evaluation; :func:`run_training` owns everything else:

* seeds: ``torch.manual_seed(seed)`` before the model is built; epoch e draws its
  permutation and augmentation from a generator seeded with ``seed * 100_003 + e`` (and
  reseeds the global RNG with it), so a run resumed from the checkpoint of epoch e
  continues exactly as an uninterrupted one would;
* checkpoints: every epoch ends with an atomic ``checkpoint.safetensors`` (weights,
  optimizer state, JSON metadata) written by rank 0; stale temporaries of a write that
  was killed are removed at start-up; a checkpoint from another configuration is refused
  with the differing fields named;
* DDP: under ``torchrun`` the model is wrapped in DistributedDataParallel and each of the
  W ranks takes a disjoint 1/W share of every epoch's permutation, in batches of
  ``ceil(batch_size / W)``; BatchNorm statistics are rank 0's;
* divergence: the first non-finite loss (or weights) stops the run before a checkpoint
  of NaN weights is written (:class:`DivergenceWatch`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import distributed
from ..checkpoint import read_checkpoint, save_checkpoint
from ..device import resolve_device
from ..errors import SnnconvError, check
from ..files import check_output_folder, remove_stale_temporaries

CHECKPOINT_NAME = "checkpoint.safetensors"


class TrainingTask:
    """What one kind of training supplies to :func:`run_training`.

    ``config`` is a dataclass with at least ``seed``, ``epochs``, ``batch_size``, ``lr``,
    ``device`` and ``validate()``; it is stored in the checkpoint and compared on resume
    (except the class attribute ``PERFORMANCE_OPTIONS``, options that change speed only).
    The hooks are called in the order they are listed.
    """

    #: a finished run may be extended with more epochs (the schedule is a function of the total)
    extendable: bool = False

    def __init__(self, config: Any) -> None:
        self.config = config

    def prepare_device(self, device: torch.device) -> None:
        """Refuse a device the configuration cannot use (default: any is fine).

        Raises:
            SnnconvError: the configuration needs something this device lacks.
        """

    def load_data(self, data_dir: str | Path | None) -> None:
        """Load the training and test splits (kept on the task)."""
        raise NotImplementedError

    def build_model(self, device: torch.device) -> nn.Module:
        """The model on ``device``; the global RNG was just seeded with ``config.seed``."""
        raise NotImplementedError

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The optimizer over ``model``'s parameters."""
        raise NotImplementedError

    def check_checkpoint(self, meta: dict, path: Path) -> None:
        """Refuse a checkpoint written by another task (default: accept).

        Raises:
            SnnconvError: the checkpoint at ``path`` belongs to another task.
        """

    def extension_note(self, from_epochs: int) -> str:
        """A log line saying what extending a finished ``from_epochs`` run does (extendable tasks)."""
        return f"extending the finished {from_epochs}-epoch run to {self.config.epochs} epochs"

    def move_data(self, device: torch.device) -> int:
        """Put the training and test tensors on ``device``; return the number of training samples."""
        raise NotImplementedError

    def learning_rate(self, step: int, total_steps: int) -> float:
        """The learning rate of global step ``step`` of ``total_steps``."""
        raise NotImplementedError

    def train_step(self, net: nn.Module, optimizer: torch.optim.Optimizer, index: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
        """One optimizer step on the training samples ``index`` (on the device), through
        ``net`` (the model, or its DDP wrapper); ``generator`` draws the augmentation.
        Returns the loss as a 0-d tensor on the device (no host sync)."""
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:
        """Called after every step (default: nothing)."""

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """The test-split scores after an epoch (the same on every rank)."""
        raise NotImplementedError

    def history_record(self, epoch: int, scores: dict, seconds: float, mean_loss: float) -> dict:
        """The entry of epoch ``epoch`` (1-based) in the checkpoint's ``history``."""
        raise NotImplementedError

    def epoch_message(self, epoch: int, scores: dict, seconds: float) -> str:
        """The log line after epoch ``epoch`` (1-based)."""
        raise NotImplementedError

    def metadata(self, epoch: int, history: list[dict], scores: dict, seconds: float, resumed: dict | None) -> dict:
        """The checkpoint metadata after epoch ``epoch``; ``resumed``: the metadata resumed from."""
        raise NotImplementedError


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer state as flat tensors ``"{param index}.{key}"`` (SGD's momentum
    buffers, AdamW's step, exp_avg, exp_avg_sq); numbers become 0-d float tensors, absent
    (None) entries are left out."""
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if value is not None:
                out[f"{index}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    return out


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Load the state written by :func:`optimizer_tensors` into ``optimizer`` (same parameter groups)."""
    state = optimizer.state_dict()
    restored: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, _, key = name.partition(".")
        restored.setdefault(int(index), {})[key] = value
    state["state"] = restored
    optimizer.load_state_dict(state)


def read_resume(checkpoint: Path, task: TrainingTask) -> tuple[dict, dict, dict] | None:
    """The checkpoint to resume from (None when there is none), refusing one from another
    task or configuration with the differing fields named.

    One change is allowed for an extendable task: more ``epochs`` for a *finished* run;
    the returned meta records the extension under ``"schedule_extensions"``.

    Raises:
        SnnconvError: the checkpoint is another task's, from another configuration, or an
            extension that is not allowed (unfinished run, fewer epochs).
    """
    if not checkpoint.exists():
        return None
    meta, state, optim_state = read_checkpoint(checkpoint)
    task.check_checkpoint(meta, checkpoint)
    config = task.config
    # Fields added in later versions take their defaults when an older checkpoint lacks them.
    saved, wanted = {**asdict(type(config)()), **meta.get("train_config", {})}, asdict(config)
    for key in getattr(type(config), "PERFORMANCE_OPTIONS", ("device",)):  # a run may resume on another device
        saved.pop(key, None), wanted.pop(key, None)
    differing = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
    if differing == ["epochs"] and task.extendable:
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


class DivergenceWatch:
    """Stops training at the first non-finite loss, before a checkpoint of NaN weights is written.

    ``record`` keeps the first bad step and its loss on the device (no host sync per step);
    ``check`` (every 50 steps and before each checkpoint, at the same steps on every rank)
    reads it, also checks the weights and BN statistics, and raises one
    :class:`SnnconvError` naming the epoch, the step and the likely cause. The previous
    epoch's checkpoint, if any, is left as it is.
    """

    def __init__(self, config: Any, steps_per_epoch: int, checkpoint: Path) -> None:
        self.config, self.steps_per_epoch, self.checkpoint = config, steps_per_epoch, checkpoint
        self.first: torch.Tensor | None = None  # [step, loss] of the first non-finite loss; step -1: none yet

    def record(self, loss: torch.Tensor, step: int) -> None:
        """Note ``loss`` of global step ``step`` if it is the first non-finite one (device ops only)."""
        loss = loss.detach().float()
        if self.first is None:
            self.first = torch.tensor([-1.0, 0.0], device=loss.device)
        bad = ~torch.isfinite(loss) & (self.first[0] < 0)  # device ops only: a fill, not a host-to-device copy
        self.first = torch.where(bad, torch.stack([loss.new_full((), float(step)), loss]), self.first)

    def check(self, model: nn.Module, epoch: int, end_of_epoch: bool = False) -> None:
        """Stop the run if any rank saw a non-finite loss (or, at the end of an epoch, weights).

        Raises:
            SnnconvError: training diverged (the message names the epoch, step and the fix).
        """
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
        cause = (f"the learning rate is likely too high (--lr {cfg.lr:g}): lower --lr" + (" or drop --amp" if getattr(cfg, "amp", False) else "")
                 + f"; {kept}")
        if bad_steps:
            step, value = min(bad_steps)
            within = int(step) - epoch * self.steps_per_epoch + 1
            raise SnnconvError(f"training diverged: the loss became {value} at epoch {epoch + 1}, step {within} of "
                               f"{self.steps_per_epoch}; {cause}")
        raise SnnconvError(f"training diverged: the weights became non-finite during epoch {epoch + 1}; {cause}")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random draw of epoch ``epoch`` (0-based) of a run seeded ``seed``."""
    return seed * 100_003 + epoch


def run_training(task: TrainingTask, out_dir: str | Path, data_dir: str | Path | None = None, progress: bool = True,
                 log: Callable[[str], Any] = print) -> tuple[nn.Module, dict]:
    """Train (or resume) ``task``'s model; writes ``out_dir/checkpoint.safetensors`` every epoch.

    Returns the trained model (eval mode) and the checkpoint metadata (the resumed one
    when the run was already complete).

    Raises:
        SnnconvError: a bad configuration, device or ``out_dir`` (before any work), a
            checkpoint in ``out_dir`` from another task or configuration, fewer training
            samples than processes, or a diverging run.
    """
    config = task.config
    config.validate()
    device = distributed.setup(resolve_device(config.device))
    task.prepare_device(device)
    world, rank = distributed.world_size(), distributed.rank()
    if rank != 0:  # rank 0 speaks for the run
        log, progress = (lambda message: None), False
    out_dir = Path(out_dir)
    distributed.run_on_main(lambda: check_output_folder(out_dir))  # before any work: a read-only --out fails now
    task.load_data(data_dir)
    torch.manual_seed(config.seed)
    model = task.build_model(device)
    optimizer = task.make_optimizer(model)
    start_epoch, history, seconds = 0, [], 0.0
    checkpoint = out_dir / CHECKPOINT_NAME
    distributed.run_on_main(lambda: remove_stale_temporaries(checkpoint))  # left by a run killed mid-write; never read
    resumed = distributed.run_on_main(lambda: read_resume(checkpoint, task))
    if resumed is not None:
        meta, state, optim_state = resumed
        model.load_state_dict(state)
        restore_optimizer(optimizer, optim_state)
        start_epoch, history = meta["epochs_done"], meta.get("history", [])
        seconds = meta.get("train_seconds", 0.0)
        log(f"resuming from epoch {start_epoch} of {config.epochs}")
        if meta.get("schedule_extensions", [{}])[-1].get("from_epochs") == start_epoch:
            log(task.extension_note(start_epoch))
    samples = task.move_data(device)
    check(samples >= world, f"{samples} training images cannot be shared by {world} processes: use fewer")
    # Each rank: an equal share of every permutation (the last N mod W samples of it sit out
    # that epoch) in batches of ceil(batch_size / W), so all ranks take the same number of
    # equal-sized steps and DDP's averaged gradient is the gradient of the global batch.
    per_rank, local_batch = samples // world, math.ceil(config.batch_size / world)
    steps_per_epoch = math.ceil(per_rank / local_batch)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    total_steps = steps_per_epoch * config.epochs
    meta = {}
    watch = DivergenceWatch(config, steps_per_epoch, checkpoint)
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        net.train()
        seed = epoch_seed(config.seed, epoch)
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # layers drawing from the global RNG (dropout) resume too
        order = torch.randperm(samples, generator=generator).to(device)[rank::world][:per_rank]
        # One process: the same generator shuffles and augments. Several: the shared
        # permutation above, then a per-rank stream so ranks augment differently.
        augment = generator if world == 1 else torch.Generator().manual_seed(seed * 1_000_003 + rank)
        batches = range(steps_per_epoch)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        loss_sum = 0.0
        for b in batches:
            step = epoch * steps_per_epoch + b
            rate = task.learning_rate(step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = rate
            loss = task.train_step(net, optimizer, order[b * local_batch : (b + 1) * local_batch], augment)
            task.after_step(model)
            loss_sum += float(loss) if b % 50 == 0 else 0.0  # a host sync every 50 steps only
            watch.record(loss, step)
            if b % 50 == 0 or b == steps_per_epoch - 1:
                watch.check(model, epoch, end_of_epoch=b == steps_per_epoch - 1)
        distributed.broadcast_buffers(model)  # BN statistics: rank 0's, the ones the checkpoint keeps
        seconds += time.perf_counter() - started  # training time; the evaluation below is not counted
        scores = task.evaluate(model)
        history.append(task.history_record(epoch + 1, scores, seconds, loss_sum / max(1, math.ceil(steps_per_epoch / 50))))
        log(task.epoch_message(epoch + 1, scores, seconds))
        meta = task.metadata(epoch + 1, history, scores, seconds, resumed[0] if resumed else None)
        if rank == 0:
            save_checkpoint(checkpoint, model, meta, optimizer_tensors(optimizer))
    if not meta:  # already complete: nothing trained in this call
        meta = resumed[0]
    distributed.barrier()  # the last checkpoint is on disk before any rank returns
    return model.eval(), meta

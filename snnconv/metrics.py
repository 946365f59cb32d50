"""Readout and counting: running averages, accuracy (of an ANN, and per step of an SNN), spike and SOP counters."""
from __future__ import annotations

import torch
from torch import nn

from . import distributed
from .errors import check


def running_average(outputs, wake_steps: int | None = None):
    """Average of the outputs ``[T, batch, ...]`` up to each step.

    avg(t) = sum_{k<=t} out(k) / min(t, wake_steps): after the wake phase the
    accumulated output is divided by the wake steps (CASC's readout). A structure of
    outputs (tuple, list or dict of heads, as simulate() returns for a model with
    several outputs) gives the same structure of readouts, one per head.

    Raises :class:`SnnconvError` unless ``wake_steps`` is None or an integer >= 1.

    Raises:
        SnnconvError: ``wake_steps`` is not None or an integer >= 1.
    """
    check(wake_steps is None or (isinstance(wake_steps, int) and not isinstance(wake_steps, bool) and wake_steps >= 1),
          f"wake_steps must be None or an integer >= 1 (the steps the output is averaged over), got {wake_steps!r}")
    if not isinstance(outputs, torch.Tensor):
        from torch.utils import _pytree as pytree

        return pytree.tree_map(lambda v: running_average(v, wake_steps) if isinstance(v, torch.Tensor) else v, outputs)
    total = outputs.shape[0]
    wake = total if wake_steps is None else wake_steps
    divisor = torch.arange(1, total + 1, device=outputs.device).clamp_(max=wake).to(outputs.dtype)
    return outputs.cumsum(0) / divisor.reshape(total, *([1] * (outputs.dim() - 1)))


def correct_per_step(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Correct predictions at every step from outputs ``[T, batch, classes]``: int64 ``[T]``.

    The prediction at step t is the arg-max of the accumulated output (any positive
    scaling of the running sum gives the same arg-max).

    Raises:
        SnnconvError: ``outputs`` is not ``[T, batch, classes]`` or ``labels`` is not ``[batch]``.
    """
    check(outputs.dim() == 3, f"outputs must be [T, batch, classes], got {tuple(outputs.shape)}")
    check(labels.shape == outputs.shape[1:2], f"labels must be [batch], got {tuple(labels.shape)}")
    predictions = outputs.cumsum(0).argmax(-1)
    return (predictions == labels.to(predictions.device)).sum(1)


class SpikeCounter:
    """Opt-in recorder for :func:`snnconv.simulate`: spike events per layer and step.

    A GN step with count n counts n events, a CIF +1 or -1 counts one, and sleep steps
    count too. ``events[name]`` is a float64 tensor ``[total_steps]`` summed over the
    batch; ``neurons[name]`` is the number of neurons per sample in that layer.
    """

    def __init__(self) -> None:
        self.events: dict[str, torch.Tensor] = {}
        self.neurons: dict[str, int] = {}
        self.samples = 0

    def record(self, name: str, neuron, out: torch.Tensor) -> None:
        """Add the events of layer ``name``'s output window ``out`` ``[T, batch, ...]``
        (``neuron.spike_units(out)`` per element) to ``events[name]``, summed over the batch.

        Raises:
            Nothing.
        """
        per_step = neuron.spike_units(out).flatten(2).sum((1, 2)).double().cpu()
        if name in self.events and self.events[name].shape == per_step.shape:
            self.events[name] += per_step
        else:
            self.events[name] = per_step
        self.neurons[name] = out[0, 0].numel()
        if name == next(iter(self.events)):
            self.samples += out.shape[1]

    def total_events(self) -> float:
        """All events counted so far, every layer and step.

        Raises:
            Nothing.
        """
        return float(sum(e.sum() for e in self.events.values()))

    def firing_rates(self) -> dict[str, float]:
        """Mean spike events per neuron per step, per layer.

        Raises:
            Nothing.
        """
        return {
            name: float(e.sum() / (self.neurons[name] * max(1, self.samples) * e.numel())) for name, e in self.events.items()
        }


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode on images ``x [N, ...]``, labels ``y [N]``.

    Under torchrun each rank scores the batches ``rank, rank + W, ...`` and the counts
    are summed, so every rank returns the single-process number.
    """
    model.eval()
    starts = range(0, len(y), batch_size)
    correct = sum(int((model(x[starts[i] : starts[i] + batch_size]).argmax(1) == y[starts[i] : starts[i] + batch_size]).sum())
                  for i in distributed.shard_indices(len(starts)))
    return distributed.sum_int(correct) / max(1, len(y))

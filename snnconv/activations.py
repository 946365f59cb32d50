"""Source-ANN activations: QCFS, clip-floor and ReLU, and the pass that swaps ReLUs for them.

QCFS: Bu et al., "Optimal ANN-SNN conversion for high-accuracy and ultra-low-latency
SNNs", ICLR 2022. Clip-floor: the CASC source (phi = 0).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import SnnconvError

ACTIVATION_KINDS = ("qcfs", "clipfloor", "relu")


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """floor(x) in the forward pass, identity gradient in the backward pass.

    Raises:
        Nothing.
    """
    return x + (torch.floor(x) - x).detach()


class QuantizedClip(nn.Module):
    """lambda * clip(floor(z * L / lambda + phi) / L, 0, 1) with a trainable scalar lambda.

    Computed as ``clamp(floor(z * (L / lambda) + phi), 0, L) * (lambda / L)``, the very
    arithmetic of the group neuron at T = 1, so that conversion is bit-exact there.

    Args:
        levels: L, the number of quantisation levels (>= 1).
        threshold: initial lambda (the clip value, later the SNN threshold theta).
        shift: phi (1/2 for QCFS, 0 for clip-floor).
        trainable: learn lambda (a straight-through gradient passes floor).

    Shapes: any input, output of the same shape.

    Raises:
        SnnconvError: (at construction) ``levels`` is not an integer >= 1, or the
            initial lambda is not > 0. :class:`QCFS` and :class:`ClipFloor` raise the same.
    """

    def __init__(self, levels: int, threshold: float = 8.0, shift: float = 0.5, trainable: bool = True) -> None:
        super().__init__()
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
            raise SnnconvError(f"levels must be an integer >= 1, got {levels!r}")
        if not threshold > 0:
            raise SnnconvError(f"the clip value lambda must be > 0, got {threshold!r}")
        self.levels = levels
        self.shift = float(shift)
        self.threshold = nn.Parameter(torch.tensor(float(threshold)), requires_grad=trainable)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lam = self.threshold
        quantised = floor_ste(z * (self.levels / lam) + self.shift)
        return torch.clamp(quantised, 0, self.levels) * (lam / self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={self.threshold.item():.4g}, shift={self.shift}"


class QCFS(QuantizedClip):
    """Quantisation-clip-floor-shift activation (phi = 1/2), trainable lambda (init 8)."""

    def __init__(self, levels: int, threshold: float = 8.0, trainable: bool = True) -> None:
        super().__init__(levels, threshold, 0.5, trainable)


class ClipFloor(QuantizedClip):
    """Clip-floor activation (phi = 0), the CASC source; lambda init 1."""

    def __init__(self, levels: int, threshold: float = 1.0, trainable: bool = True) -> None:
        super().__init__(levels, threshold, 0.0, trainable)


MIN_THRESHOLD = 1e-3


@torch.no_grad()
def keep_thresholds_positive(model: nn.Module, minimum: float = MIN_THRESHOLD, report: bool = True) -> list[str]:
    """Clamp every QCFS / clip-floor lambda to ``>= minimum``, in place; call after each
    optimizer step. A gradient step can push lambda through 0, after which the layer is
    no clipped ReLU and no spiking threshold matches it (conversion refuses it).
    ``snnconv train`` calls this after every step.

    Returns:
        The names of the activations whose lambda was raised (empty when none was).
        With ``report=False`` every lambda is clamped on its device without being read
        (no host sync: the form a training step uses) and the list is empty.

    Raises:
        Nothing: a NaN or too-small lambda is repaired, not refused.
    """
    if not report:
        for module in model.modules():
            if isinstance(module, QuantizedClip):
                module.threshold.data.nan_to_num_(nan=minimum).clamp_(min=minimum)
        return []
    raised = []
    for name, module in model.named_modules():
        if isinstance(module, QuantizedClip) and not float(module.threshold) >= minimum:
            module.threshold.clamp_(min=minimum).nan_to_num_(nan=minimum)
            raised.append(name)
    return raised


def make_activation(kind: str, levels: int = 4, threshold: float | None = None) -> nn.Module:
    """Build an activation by name: ``"qcfs"``, ``"clipfloor"`` or ``"relu"``.

    Raises:
        SnnconvError: ``kind`` is not one of ``qcfs``, ``clipfloor``, ``relu``, or
            ``levels`` / ``threshold`` are invalid (see :class:`QuantizedClip`).
    """
    if kind == "qcfs":
        return QCFS(levels) if threshold is None else QCFS(levels, threshold)
    if kind == "clipfloor":
        return ClipFloor(levels) if threshold is None else ClipFloor(levels, threshold)
    if kind == "relu":
        return nn.ReLU()
    raise SnnconvError(f"unknown activation {kind!r}: choose one of {', '.join(ACTIVATION_KINDS)}")


_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)


def is_relu_node(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A graph node that computes ReLU: a module, a function or the ``x.relu()`` method.

    Raises:
        Nothing.
    """
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


class Clip(nn.Module):
    """lambda * clip(z / lambda, 0, 1) = clamp(z, 0, lambda): the limit IF converges to.

    As T grows, an IF neuron (reset by subtraction) with threshold theta = lambda fires at
    the average rate clip(z / lambda, 0, 1) (Bu et al., ICLR 2022, eq. 6 with T -> inf),
    so a source with ``Clip`` in place of its quantiser is the network IF converges to.
    The threshold is a buffer copied from the source's lambda, not a parameter.
    """

    def __init__(self, threshold: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("threshold", threshold.detach().clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.relu(z), self.threshold)


def clip_limit(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` with every :class:`QuantizedClip` replaced by :class:`Clip`.

    This is the "clip limit" of ``../shared/methods.md`` section 1: the network an IF
    conversion approaches at large T. A QCFS source is only useful when its clip limit
    scores about as well as the ANN itself. Returns None for a model with no quantiser
    (a ReLU source has no clip limit). The input model is not modified.

    Raises:
        Nothing.
    """
    if not any(isinstance(m, QuantizedClip) for m in model.modules()):
        return None
    model = copy.deepcopy(model)
    _replace_modules(model, QuantizedClip, lambda m: Clip(m.threshold))
    return model


def _replace_modules(module: nn.Module, kind: type, make) -> None:
    for name, child in module.named_children():
        if isinstance(child, kind):
            setattr(module, name, make(child))
        else:
            _replace_modules(child, kind, make)


@torch.no_grad()
def init_thresholds(model: nn.Module, x: torch.Tensor, percentile: float = 99.9) -> list[float]:
    """Set every trainable lambda from data: the ``percentile`` of its layer's positive pre-activations.

    One forward pass over ``x`` (a batch of training images), layer by layer: each
    :class:`QuantizedClip` takes lambda = the given percentile of the positive values of its
    input z, computed when the pass reaches it, so later layers see earlier layers already
    set. BatchNorm runs in training mode (batch statistics, as in the first training step)
    and every buffer is restored afterwards, so the pass changes nothing but lambda.

    Why: the QCFS code initialises lambda = 8 for its own networks, but with BN-normalised
    pre-activations (about N(0, 1)) and L = 4 that makes the quantisation step 2 wide. A
    short run then learns to live with that coarse step and the clip limit (what IF
    converges to) falls far below the ANN (measured: MNIST small_cnn, 93.5% ANN, 21.3% clip
    limit); a lambda fitted to the data keeps the two within a point.

    Returns the lambdas set, in module order.

    Raises:
        SnnconvError: ``percentile`` is outside (0, 100], or ``x`` holds NaN or inf
            (checked before the forward pass, so nothing is changed).
    """
    if not 0 < percentile <= 100:
        raise SnnconvError(f"the lambda percentile must be in (0, 100], got {percentile!r}")
    if not torch.isfinite(x).all():
        raise SnnconvError("the batch used to initialise lambda holds NaN or inf: check the training data")
    sites = [m for m in model.modules() if isinstance(m, QuantizedClip) and m.threshold.requires_grad]
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    was_training = model.training
    chosen: list[float] = []

    def fit(module: QuantizedClip, inputs: tuple, kwargs: dict) -> None:
        z = (inputs[0] if inputs else next(iter(kwargs.values()))).detach().float().flatten()  # act(h) or act(z=h)
        positive = z[z > 0]
        value = float(torch.quantile(positive[:16_000_000], percentile / 100)) if positive.numel() else 1.0
        value = value if value > 0 and math.isfinite(value) else 1.0
        module.threshold.fill_(value)
        chosen.append(value)

    handles = [m.register_forward_pre_hook(fit, with_kwargs=True) for m in sites]
    try:
        model.train()
        model(x)
    finally:
        for h in handles:
            h.remove()
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
        model.train(was_training)
    return chosen


__all__ = [
    "ACTIVATION_KINDS",
    "Clip",
    "ClipFloor",
    "QCFS",
    "QuantizedClip",
    "clip_limit",
    "floor_ste",
    "init_thresholds",
    "is_relu_node",
    "keep_thresholds_positive",
    "make_activation",
]

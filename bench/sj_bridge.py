"""SpikingJelly as a reference: convert the same weights with its ANN2SNN converter and
run it the way its examples do (single-step module, called T times in a Python loop).

SpikingJelly (``spikingjelly==2.0.0``) is an optional benchmark dependency: import this
module and call :func:`available` first. Nothing in ``snnconv`` imports it.

What SpikingJelly gets, precisely (so comparisons are fair):

* the source network with every QCFS / clip-floor activation replaced by ``nn.ReLU``
  (its ``RateCodingRecipe`` converts ReLU networks only, by calibrating a threshold per
  layer) and the very same weights, BN included (it folds BN itself, as we do);
* its IF neuron: ``IFNode(v_reset=None)`` (reset by subtraction), v(0) = 0, threshold 1
  between a scaler 1/s and a scaler s, s the calibrated scale of the layer.

:func:`match_thresholds` overwrites SpikingJelly's per-layer scales with our thetas, so
both networks compute the same function step for step (the fairness check).
"""
from __future__ import annotations

import copy
import logging
import os

import torch
from torch import nn

from snnconv.activations import QuantizedClip


def available() -> bool:
    """True when ``spikingjelly.activation_based.ann2snn`` imports."""
    try:
        from spikingjelly.activation_based import ann2snn, functional, neuron  # noqa: F401
    except Exception:  # ImportError, or a broken optional dependency
        return False
    return True


def _quiet() -> None:
    """SpikingJelly logs every conversion through loguru and draws a tqdm bar while it
    calibrates; keep benchmark output readable."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from loguru import logger

        logger.remove()
        logger.add(lambda _msg: None, level="ERROR")
    except Exception:
        logging.getLogger("spikingjelly").setLevel(logging.ERROR)


def relu_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every QCFS / clip-floor activation replaced by ReLU
    (same weights, same BN); the form SpikingJelly's rate-coding converter accepts."""
    copied = copy.deepcopy(model).eval()

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, QuantizedClip):
                setattr(module, name, nn.ReLU())
            else:
                swap(child)

    swap(copied)
    return copied


def convert(relu_model: nn.Module, calibration: torch.Tensor, mode: str = "99.9%", batch_size: int = 256) -> nn.Module:
    """SpikingJelly's ``FXConverter(RateCodingRecipe(mode=...))`` on ``relu_model``.

    ``mode``: ``"Max"`` or a percentile string such as ``"99.9%"`` (its two documented
    layer-wise calibrations). ``calibration`` is cut into batches of ``batch_size``.
    """
    from spikingjelly.activation_based import ann2snn

    _quiet()
    batches = [(calibration[i : i + batch_size],) for i in range(0, len(calibration), batch_size)]
    recipe = ann2snn.RateCodingRecipe(dataloader=batches, mode=mode)
    converter = ann2snn.FXConverter(recipe=recipe, device=calibration.device)
    return converter.convert(copy.deepcopy(relu_model).eval()).eval()


def scalers(sj_net: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(input scaler 1/s, output scaler s) of each spiking layer, in graph order."""
    modules = dict(sj_net.named_modules())
    pairs = []
    for node in sj_net.graph.nodes:
        if node.op == "call_module" and str(node.target).endswith(".scaler0"):
            prefix = str(node.target)[: -len(".scaler0")]
            pairs.append((modules[f"{prefix}.scaler0"], modules[f"{prefix}.scaler1"]))
    return pairs


def thresholds(sj_net: nn.Module) -> list[float]:
    """SpikingJelly's calibrated per-layer scales (its thresholds in ANN units)."""
    return [float(out.scale) for _, out in scalers(sj_net)]


def match_thresholds(sj_net: nn.Module, snn) -> None:
    """Give SpikingJelly's layers our thetas, computed exactly as our neurons compute them:
    the input is scaled by the float ``1 / theta`` and the spike re-scaled by ``theta``.

    Raises ``ValueError`` when the two networks do not have the same spiking layers.
    """
    ours = [m.threshold for _, m in snn.spiking_layers()]
    pairs = scalers(sj_net)
    if len(ours) != len(pairs):
        raise ValueError(f"SpikingJelly has {len(pairs)} spiking layers, snnconv {len(ours)}")
    for theta, (scale_in, scale_out) in zip(ours, pairs):
        theta = theta.to(scale_in.scale.dtype).reshape(())
        scale_in.scale = 1 / theta  # our group_window scales by tau / theta with tau = 1
        scale_out.scale = theta.clone()


def if_nodes(sj_net: nn.Module) -> list[nn.Module]:
    """SpikingJelly's IF neuron modules, in graph order."""
    modules = dict(sj_net.named_modules())
    return [modules[n.target] for n in sj_net.graph.nodes if n.op == "call_module" and str(n.target).endswith(".if_node")]


@torch.no_grad()
def simulate(sj_net: nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Run SpikingJelly's converted network for ``steps`` steps as its examples do:
    ``functional.reset_net`` then ``net(x)`` once per step. Returns the output of every
    step ``[steps, batch, ...]`` (not averaged), like :func:`snnconv.simulate`."""
    from spikingjelly.activation_based import functional

    functional.reset_net(sj_net)
    return torch.stack([sj_net(x) for _ in range(steps)])

"""Pass: SNN Calibration's bias calibration (BC), layer by layer from the input.

Li, Deng, Dong, Gong, Gu, "A Free Lunch From ANN: Towards Efficient, Accurate Spiking
Neural Networks Calibration", ICML 2021 (docs/methods.md, section 2b). For each spiking
layer l in order, with layers 1..l-1 already calibrated::

    b_l <- b_l + mean_{samples, positions}(z_ANN - z_SNN)     (one value per channel)

(a conv's channels are dim 1 of ``[B, C, H, W]``; a linear layer's are its features,
the last dim, also on tokens ``[B, N, F]``).
z_SNN is the layer's input averaged over the T steps. The layer's own neuron and
everything before it are unchanged by the shift, so the layer's mean pre-activation
error over the calibration set becomes zero per channel. The authors' code matches the
layers' outputs instead of their inputs; we follow our spec (pre-activations).
"""
from __future__ import annotations

import torch
from torch import fx, nn

from ..network import SpikingNetwork
from .layer_probe import bias_layer, mean_difference


def per_channel(mean: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """One sample's per-element mean -> the mean per output channel of ``layer``.

    A conv's channels are dim 0 of one sample (``[C, H, W]`` -> ``[C]``); a linear
    layer's are its last dim, whatever comes before it (``[F]`` or tokens ``[N, F]`` ->
    ``[F]``: the bias is added along the features, not the tokens).

    Raises:
        Nothing.
    """
    if mean.dim() <= 1:
        return mean
    if isinstance(layer, nn.Linear):
        return mean.reshape(-1, mean.shape[-1]).mean(0)
    return mean.reshape(mean.shape[0], -1).mean(1)


def shift_bias(layer: nn.Module, shift: torch.Tensor) -> None:
    """Add ``shift`` ``[C_out]`` to a conv/linear layer's bias (creating a zero bias if it has none).

    Raises:
        Nothing.
    """
    weight = layer.weight
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
    with torch.no_grad():
        layer.bias.add_(shift.to(layer.bias.dtype))


def bias_calibration(ann: fx.GraphModule, snn: SpikingNetwork, batches: list[torch.Tensor], steps: int,
                     seed: int = 0, progress: bool = False, target: str = "output") -> dict[str, str]:
    """Shift each spiking layer's bias by its mean pre-activation error, in place.

    Args:
        ann: the prepared ANN graph the SNN was converted from (unchanged).
        snn: the converted network; its conv/linear biases are changed.
        batches: calibration batches (:func:`check_calibration_data`).
        steps: T, the simulation length calibrated for.
        seed: seeds the SNN runs (TPP spikes, permutations).
        progress: a tqdm bar over the layers.

    Returns:
        For each spiking layer, what was shifted: ``"bias of <layer>"``, or ``"none"``
        when no conv/linear layer feeds it through additions only.

    Raises:
        Nothing of its own: its inputs come checked from :func:`snnconv.convert`.
    """
    from tqdm import tqdm

    done: dict[str, str] = {}
    for name, _ in tqdm(snn.spiking_layers(), desc="SNNC bias calibration", unit="layer", disable=not progress, leave=False):
        found = bias_layer(snn, name)
        if found is None:
            done[name] = "none"
            continue
        layer_name, layer = found
        shift_bias(layer, per_channel(mean_difference(ann, snn, batches, name, steps, seed, target), layer))
        done[name] = f"bias of {layer_name}"
    return done

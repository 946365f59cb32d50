"""Pass: SNN Calibration's potential calibration (PC), layer by layer from the input.

Li et al., ICML 2021 / IJCV 2024 (docs/methods.md, section 2b). For each spiking layer l
in order, with layers 1..l-1 already calibrated, every neuron's initial potential gets::

    v(0) <- v(0) + T * mean_{samples}(z_ANN - z_SNN)          (one value per neuron)

which adds the layer's mean pre-activation error to its T-step input sum, exactly as a
per-neuron bias would, without touching the weights or biases. As in the authors' code
(``mem_pot_init``) the correction is per neuron (per element of one sample), so the
network then expects inputs of the calibration images' size.
"""
from __future__ import annotations

import torch
from torch import fx

from ..network import SpikingNetwork
from .layer_probe import mean_difference, neuron_at


def potential_calibration(ann: fx.GraphModule, snn: SpikingNetwork, batches: list[torch.Tensor], steps: int,
                          seed: int = 0, progress: bool = False, target: str = "output") -> dict[str, str]:
    """Add T times each neuron's mean pre-activation error to its v(0), in place.

    Args:
        ann: the prepared ANN graph the SNN was converted from (unchanged).
        snn: the converted network (IF, GN or TPP neurons); each neuron gets a
            ``potential_offset`` buffer of one sample's shape.
        batches: calibration batches; steps: T; seed: seeds the SNN runs.
        progress: a tqdm bar over the layers.

    Returns:
        For each spiking layer, ``"initial potential"``.

    Raises:
        Nothing of its own: its inputs come checked from :func:`snnconv.convert`.
    """
    from tqdm import tqdm

    done: dict[str, str] = {}
    for name, _ in tqdm(snn.spiking_layers(), desc="SNNC potential calibration", unit="layer", disable=not progress, leave=False):
        neuron = neuron_at(snn, name)
        correction = mean_difference(ann, snn, batches, name, steps, seed, target) * steps
        if neuron.offset is not None:
            correction = correction + neuron.offset.to(correction.dtype)
        neuron.set_potential_offset(correction.to(neuron.threshold.dtype))
        done[name] = "initial potential"
    return done

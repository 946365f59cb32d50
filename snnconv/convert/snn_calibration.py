"""SNN Calibration pipelines (Li et al., ICML 2021; IJCV 2024): which passes, in which order.

    light     = bias calibration                      (the authors' ``--calib light``)
    advanced  = weight calibration, then potential calibration   (``--calib advanced``)
    bias      = bias calibration only;  potential = potential calibration only

Each pass runs layer by layer from the input on the converted network itself (so a TPP
or permuted network is calibrated as it will run), post-training, on the calibration
images, for one T. The report records every layer's pre-activation error before and
after and the seconds each pass took.
"""
from __future__ import annotations

import time

import torch
from torch import fx

from ..errors import SnnconvError
from ..network import SpikingNetwork
from .bias_calibration import bias_calibration
from .fold_bn import FoldedLinearBN
from .layer_probe import TARGETS, layer_errors
from .potential_calibration import potential_calibration
from .weight_calibration import WeightCalibration, weight_calibration

PIPELINES = {
    "light": ("bias",),
    "advanced": ("weights", "potential"),
    "bias": ("bias",),
    "potential": ("potential",),
}
CALIBRATED_NEURONS = ("if", "gn", "tpp")
# Images the authors calibrate on ("~1000"; 1024 in their weight calibration).
DEFAULT_IMAGES = 1024


def check_mode(mode: str | None, neuron: str, steps) -> None:
    """Refuse an unknown pipeline, a neuron it cannot calibrate, or a missing T (before any work).

    Raises:
        SnnconvError: ``mode`` is not a known pipeline, ``neuron`` cannot be calibrated
            (CIF), or ``steps`` is not an integer >= 1.
    """
    if mode is None:
        return
    if mode not in PIPELINES:
        raise SnnconvError(f"snn_calibration must be None or one of {', '.join(PIPELINES)}, got {mode!r}")
    if neuron not in CALIBRATED_NEURONS:
        raise SnnconvError(f"snn_calibration works with the {', '.join(CALIBRATED_NEURONS)} neurons, not {neuron!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SnnconvError(f"snn_calibration={mode!r} calibrates for one T: pass calibration_steps=T (an integer >= 1), got {steps!r}")


def check_token_batchnorm(ann: fx.GraphModule, sample: torch.Tensor, mode: str) -> None:
    """Refuse bias or weight calibration of a Linear -> BatchNorm1d pair that reads tokens.

    On ``[batch, N, features]`` BatchNorm1d normalises the N axis, so the pair is kept
    unfolded (:class:`FoldedLinearBN`) and neither its folded bias nor its folded weights
    are the ones that run: calibrating them would change nothing, silently. One sample
    of the calibration data runs through the ANN to see each pair's input.

    Raises:
        SnnconvError: such a pair under a pipeline with bias or weight calibration,
            naming the Linear and the fix.
    """
    if not {"bias", "weights"} & set(PIPELINES[mode]):
        return
    seen: dict[str, int] = {}

    def record(name: str):
        def hook(_module, inputs) -> None:
            seen[name] = max(seen.get(name, 0), inputs[0].dim())
        return hook

    handles = [module.register_forward_pre_hook(record(name))
               for name, module in ann.named_modules() if isinstance(module, FoldedLinearBN)]
    if not handles:
        return
    try:
        with torch.no_grad():
            ann(sample)
    finally:
        for handle in handles:
            handle.remove()
    tokens = [name for name, dim in seen.items() if dim > 2]
    if tokens:
        raise SnnconvError(
            f"snn_calibration={mode!r} cannot calibrate {tokens[0]!r}: it is a Linear followed by BatchNorm1d on "
            f"tokens [batch, N, features], where BatchNorm1d normalises the token axis and no bias or weight of "
            f"{tokens[0]!r} carries the calibration; use snn_calibration='potential' (v(0) per neuron), or no SNN Calibration")


def calibrate_snn(ann: fx.GraphModule, snn: SpikingNetwork, batches: list[torch.Tensor], mode: str, steps: int,
                  seed: int = 0, weights: WeightCalibration = WeightCalibration(), progress: bool = False,
                  target: str = "output") -> dict:
    """Run the ``mode`` pipeline on ``snn`` in place; return its report.

    Args:
        ann: the prepared ANN graph (thresholds set) the SNN was converted from.
        snn: the converted network; biases, weights and v(0) offsets change.
        batches: checked calibration batches; steps: T; seed: seeds SNN runs.
        weights: weight-calibration settings (advanced only).
        target: what bias and potential calibration match, per channel / per neuron:
            ``"output"`` (the layer's mean output, as the authors' code does) or
            ``"preactivation"`` (its mean input, as our spec first read the paper).
        progress: tqdm bars.

    Returns:
        ``{"mode", "target", "passes", "steps", "images", "seconds", "layers",
        "weight_calibration"?}`` and every layer's mean squared error of the pre-activation
        and of the output (ANN minus SNN over the calibration set) before and after:
        ``"preactivation_mse_before"``, ``"preactivation_mse_after"``,
        ``"output_mse_before"``, ``"output_mse_after"``.

    Raises:
        SnnconvError: as :func:`check_mode`, or ``target`` is not ``output`` /
            ``preactivation``, or a Linear -> BatchNorm1d pair on tokens under bias or
            weight calibration (:func:`check_token_batchnorm`).
    """
    check_mode(mode, snn.neuron, steps)
    if target not in TARGETS:
        raise SnnconvError(f"the calibration target must be one of {', '.join(TARGETS)}, got {target!r}")
    check_token_batchnorm(ann, batches[0][:1], mode)
    report: dict = {"mode": mode, "target": target, "passes": list(PIPELINES[mode]), "steps": steps,
                    "images": sum(b.shape[0] for b in batches), "seconds": {}}
    before = layer_errors(ann, snn, batches, steps, seed)
    report["preactivation_mse_before"], report["output_mse_before"] = before["preactivation"], before["output"]
    for step in PIPELINES[mode]:
        start = time.perf_counter()
        if step == "bias":
            report["layers"] = bias_calibration(ann, snn, batches, steps, seed, progress, target)
        elif step == "potential":
            report["layers"] = potential_calibration(ann, snn, batches, steps, seed, progress, target)
        else:
            report["weight_calibration"] = weight_calibration(ann, snn, batches, steps, seed, weights, progress)
        report["seconds"][step] = time.perf_counter() - start
    after = layer_errors(ann, snn, batches, steps, seed)
    report["preactivation_mse_after"], report["output_mse_after"] = after["preactivation"], after["output"]
    snn.forget_checks()  # parameters changed: scan them again
    return report

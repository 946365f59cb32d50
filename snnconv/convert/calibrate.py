"""Pass: set each ReLU site's threshold from data: max, a percentile, or SNNC's MSE search.

Per layer (one theta) or per channel (one theta per output channel, dimension 1). The
MSE search is SNN Calibration's (Li et al., ICML 2021; docs/methods.md section 2b):
the theta minimising the mean squared error between the ANN activation a = ReLU(z) and
its T-step IF approximation q(a; theta) = (theta / L) * clip(floor(a * L / theta + 1/2), 0, L),
L = T (times tau for group neurons).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import fx

from ..errors import SnnconvError
from .activation_sites import ActivationSite, activation_sites
from .calibration_data import check_calibration_data

# Keep at most this many activation values per site and batch: a percentile or an MSE of
# a uniform random sample is accurate to well under a percent here.
_SAMPLE_PER_BATCH = 1 << 18
# MSE search: the authors' grid, theta = max * (1 - 0.01 i) for i = 0..94, then two
# rounds of a 21-point grid between the neighbours of each of the best three candidates.
_COARSE = 95
_REFINE_POINTS = 21
_REFINE_ROUNDS = 2
_STARTS = 3


def parse_threshold(method: str | float) -> str | float:
    """``"max"`` or ``"mse"`` as given; ``99.9`` / ``"99.9"`` -> 99.9 (a percentile in (0, 100]).

    Raises:
        SnnconvError: ``method`` is neither ``max``, ``mse`` nor a number, or the
            percentile is outside (0, 100].
    """
    if method in ("max", "mse"):
        return method
    try:
        pct = float(method)
    except (TypeError, ValueError):
        raise SnnconvError(f"the calibration threshold (--calibrate, threshold=) must be 'max', 'mse' or a percentile such as 99.9, got {method!r}") from None
    if not 0 < pct <= 100:
        raise SnnconvError(f"calibration percentile must be in (0, 100], got {pct}")
    return pct


def quantize(a: torch.Tensor, theta: torch.Tensor | float, levels: int) -> torch.Tensor:
    """(theta / L) * clip(floor(a * L / theta + 1/2), 0, L): what an IF neuron with v(0) = theta/2
    outputs on average over L steps for the constant input a.

    Raises:
        Nothing.
    """
    return torch.clamp(torch.floor(a * (levels / theta) + 0.5), 0, levels) * (theta / levels)


def mse_curve(values: torch.Tensor, thetas: torch.Tensor, levels: int) -> torch.Tensor:
    """Mean squared quantisation error per candidate: ``values`` ``[C, M]``, ``thetas``
    ``[K, C]`` -> ``[K, C]``.

    Raises:
        Nothing.
    """
    return torch.stack([((values - quantize(values, th[:, None], levels)) ** 2).mean(1) for th in thetas])


def mse_threshold(values: torch.Tensor, levels: int, top: torch.Tensor | None = None) -> torch.Tensor:
    """theta minimising E[(a - q(a; theta))^2] per row of ``values`` ``[C, M]`` (rows: channels).

    Candidates: the authors' grid theta = max * (1 - 0.01 i), i = 0..94, then refined twice
    on a 21-point grid between the neighbours of each of the three best candidates (the
    error is piecewise quadratic in theta with many local minima). ``top``: the rows' maxima
    ``[C]`` when ``values`` is a subsample (default: the maxima of ``values``). Returns ``[C]``.

    Raises:
        Nothing.
    """
    values = values.double()
    top = (values.amax(1) if top is None else top.double()).clamp_min(torch.finfo(torch.float64).tiny)
    fractions = 1.0 - 0.01 * torch.arange(_COARSE, dtype=torch.float64)
    thetas = fractions[:, None] * top[None, :]
    errors = mse_curve(values, thetas, levels)
    rows = torch.arange(values.shape[0])
    best_theta = best_error = None
    for start in errors.argsort(0)[:_STARTS]:  # refine around the best few coarse candidates
        theta, error = thetas[start, rows], errors[start, rows]
        step = 0.01 * top
        for _ in range(_REFINE_ROUNDS):
            offsets = torch.linspace(-1.0, 1.0, _REFINE_POINTS, dtype=torch.float64)
            candidates = (theta[None, :] + offsets[:, None] * step[None, :]).clamp(min=0.05 * top, max=top)
            cand_errors = mse_curve(values, candidates, levels)
            pick = cand_errors.argmin(0)
            better = cand_errors[pick, rows] < error
            theta = torch.where(better, candidates[pick, rows], theta)
            error = torch.where(better, cand_errors[pick, rows], error)
            step = step * 2.0 / (_REFINE_POINTS - 1)
        if best_theta is None:
            best_theta, best_error = theta, error
        else:
            better = error < best_error
            best_theta, best_error = torch.where(better, theta, best_theta), torch.where(better, error, best_error)
    theta = best_theta
    return theta


def _rows(output: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """An activation ``[B, C, ...]`` as ``[C, B * ...]`` (per channel) or ``[1, numel]`` (per
    layer, and for a ``[B]`` activation, which has no channel dim)."""
    if not per_channel or output.dim() < 2:
        return output.reshape(1, -1)
    return output.transpose(0, 1).reshape(output.shape[1], -1)


def _theta_shape(output_shape: torch.Size, per_channel: bool) -> tuple[int, ...]:
    """Per channel: ``[C, 1, ...]`` so theta broadcasts over the sample's other dims."""
    return (output_shape[1], *([1] * (len(output_shape) - 2))) if per_channel and len(output_shape) > 1 else ()


def calibrate_thresholds(
    graph_module: fx.GraphModule,
    data: Iterable[torch.Tensor] | torch.Tensor,
    method: str | float = "99.9",
    only_missing: bool = True,
    seed: int = 0,
    *,
    per_channel: bool = False,
    levels: int | None = None,
) -> fx.GraphModule:
    """Set theta of each activation site from the activations it produces on ``data``.

    Args:
        graph_module: a prepared graph (:func:`snnconv.convert.prepare`).
        data: a tensor ``[N, ...]`` or an iterable of batches (or (x, y) pairs).
        method: ``"max"``; a percentile in (0, 100] of the site's positive outputs;
            or ``"mse"``: SNNC's search (module docstring), which needs ``levels``.
        only_missing: keep the sites that already know theta (QCFS, clip).
        seed: the subsample of activation values kept for percentiles and the MSE.
        per_channel: one theta per output channel (dimension 1) instead of per layer;
            a channel that never fires gets the layer's theta.
        levels: L = T (times tau) for the MSE search.

    Raises:
        SnnconvError: bad data (:func:`check_calibration_data`), too few values for the
        percentile (:func:`check_percentile_data`), ``"mse"`` without ``levels``: all
        before any calibration pass runs; a site that never fires: after the pass, but
        before any site is changed.
    """
    method = parse_threshold(method)
    if not isinstance(per_channel, bool):
        raise SnnconvError(f"per_channel must be True or False, got {per_channel!r}")
    if method == "mse" and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 1):
        raise SnnconvError("threshold='mse' needs the number of steps T it is searched for: pass calibration_steps=T")
    sites = [(n, s) for n, s in activation_sites(graph_module) if not (only_missing and s.threshold is not None)]
    if not sites:
        return graph_module
    batches = check_calibration_data(graph_module, data)
    if method not in ("max", "mse", 100.0):
        check_percentile_data(graph_module, sites, batches, method, per_channel)
    generator = torch.Generator().manual_seed(seed)
    maxima: dict[str, torch.Tensor] = {}
    samples: dict[str, list[torch.Tensor]] = {n: [] for n, _ in sites}
    shapes: dict[str, torch.Size] = {}

    def hook(name):
        def record(_module, _inputs, output):
            rows = _rows(output.detach(), per_channel)
            shapes[name] = output.shape
            top = rows.amax(1).clamp_min(0).double().cpu()
            maxima[name] = top if name not in maxima else torch.maximum(maxima[name], top)
            if method != "max":
                keep = max(1, _SAMPLE_PER_BATCH // rows.shape[0])
                if rows.shape[1] > keep:
                    idx = torch.randint(rows.shape[1], (keep,), generator=generator)
                    rows = rows[:, idx.to(rows.device)]
                samples[name].append(rows.double().cpu())

        return record

    handles = [s.register_forward_hook(hook(n)) for n, s in sites]
    try:
        with torch.no_grad():
            for x in batches:
                graph_module(x)
    finally:
        for h in handles:
            h.remove()
    thresholds = {name: _site_threshold(site.path or name, maxima[name], samples[name], method, levels) for name, site in sites}
    for name, site in sites:  # all checks passed: only now is any site changed
        theta = thresholds[name]
        site.threshold = float(theta) if theta.numel() == 1 and not per_channel else theta.reshape(_theta_shape(shapes[name], per_channel))
    return graph_module


def percentile_values_needed(percentile: float) -> int:
    """The fewest values whose top 1 - p/100 holds at least one: ceil(100 / (100 - p)).

    Raises:
        Nothing (``percentile`` in (0, 100); 100 is the maximum and needs one value).
    """
    return 1 if percentile >= 100 else math.ceil(100.0 / (100.0 - percentile) - 1e-9)


def check_percentile_data(graph_module: fx.GraphModule, sites: list[tuple[str, ActivationSite]], batches: list[torch.Tensor],
                          percentile: float, per_channel: bool) -> None:
    """Refuse calibration data too small for ``percentile`` before any calibration pass.

    One image is run to read each site's output shape ``[1, C, ...]``; a threshold sees
    ``N * prod(...)`` values (per channel) or ``N * C * prod(...)`` (per layer) on ``N``
    images, zeros included, and the percentile needs :func:`percentile_values_needed`.

    Raises:
        SnnconvError: the first site (in graph order) with too few values: one line with
            the images it needs, a lower percentile, and (per channel) per-layer thresholds.
    """
    shapes: dict[str, torch.Size] = {}
    handles = [site.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, out.shape)) for name, site in sites]
    try:
        with torch.no_grad():
            graph_module(batches[0][:1])
    finally:
        for h in handles:
            h.remove()
    images = sum(b.shape[0] for b in batches)
    need = percentile_values_needed(percentile)
    for name, site in sites:
        shape = shapes.get(name)
        if shape is None:
            continue
        per_image = math.prod(shape[1:]) // (shape[1] if per_channel and len(shape) > 1 else 1)
        if images * per_image < need:
            layer = ", or one threshold per layer (per_channel=False; no --per-channel)" if per_channel else ""
            raise SnnconvError(
                f"activation {site.path or name!r} gives {images * per_image} values per threshold on {images} calibration "
                f"image(s) ({per_image} per image); the {percentile:g}th percentile needs at least {need}: pass at least "
                f"{math.ceil(need / per_image)} images (calibration=x; --calibration-images N), or a lower percentile "
                f"(threshold=; --calibrate){layer}"
            )


def _site_threshold(name: str, maxima: torch.Tensor, samples: list[torch.Tensor], method: str | float, levels: int | None) -> torch.Tensor:
    """theta for one site, ``[C]`` (C = 1 per layer); see :func:`calibrate_thresholds`."""
    if float(maxima.max()) <= 0:
        raise SnnconvError(
            f"activation {name!r} never fired on the calibration data, so no threshold can be set: "
            "calibrate on more (or more varied) data"
        )
    if method == "max" or method == 100.0:
        theta = maxima.clone()
    elif method == "mse":
        theta = mse_threshold(torch.cat(samples, 1), levels, maxima)
    else:  # enough values: check_percentile_data (a subsample may hold fewer; k stays in range)
        values = torch.cat(samples, 1)
        theta = torch.zeros(values.shape[0], dtype=torch.float64)
        for c, row in enumerate(values):
            positive = row[row > 0]
            if positive.numel() == 0:
                continue
            k = max(1, min(positive.numel(), int(round(method / 100 * positive.numel()))))
            theta[c] = positive.kthvalue(k).values
    fired = (maxima > 0) & (theta > 0)
    if not bool(fired.all()):  # a channel that never fired: use the layer's value
        layer = float(theta[fired].max()) if method == "max" else float(theta[fired].median())
        theta = torch.where(fired, theta, torch.full_like(theta, layer))
    return theta

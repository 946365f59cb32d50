"""Pass: set each ReLU site's threshold from data (max or a percentile of its activations)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import fx

from ..errors import SnnconvError
from .activation_sites import activation_sites

# Keep at most this many activation values per site and batch: a percentile of a
# uniform random sample is accurate to well under a percent of the true quantile here.
_SAMPLE_PER_BATCH = 1 << 18


def parse_calibration_method(method: str | float) -> float | None:
    """'max' -> None, '99.9' / 99.9 -> 99.9 (percent); raises :class:`SnnconvError` for
    anything else, including percentiles outside (0, 100]."""
    if method == "max":
        return None
    try:
        pct = float(method)
    except (TypeError, ValueError):
        raise SnnconvError(f"calibration method must be 'max' or a percentile such as 99.9, got {method!r}") from None
    if not 0 < pct <= 100:
        raise SnnconvError(f"calibration percentile must be in (0, 100], got {pct}")
    return pct


def calibrate_thresholds(
    graph_module: fx.GraphModule,
    data: Iterable[torch.Tensor] | torch.Tensor,
    method: str | float = "99.9",
    only_missing: bool = True,
    seed: int = 0,
) -> fx.GraphModule:
    """Set theta of each activation site from the activations it produces on ``data``.

    theta = max, or the given percentile, of the site's positive outputs over all of
    ``data`` (a tensor ``[N, ...]`` or an iterable of batches, or of (x, y) pairs).
    With ``only_missing`` the sites that already know theta (QCFS, clip) are kept.
    """
    pct = parse_calibration_method(method)
    sites = [(n, s) for n, s in activation_sites(graph_module) if not (only_missing and s.threshold is not None)]
    if not sites:
        return graph_module
    generator = torch.Generator().manual_seed(seed)
    maxima = {n: 0.0 for n, _ in sites}
    samples: dict[str, list[torch.Tensor]] = {n: [] for n, _ in sites}

    def hook(name):
        def record(_module, _inputs, output):
            positive = output.detach().flatten()
            positive = positive[positive > 0]
            if positive.numel() == 0:
                return
            maxima[name] = max(maxima[name], float(positive.max()))
            if pct is not None:
                if positive.numel() > _SAMPLE_PER_BATCH:
                    idx = torch.randint(positive.numel(), (_SAMPLE_PER_BATCH,), generator=generator)
                    positive = positive[idx.to(positive.device)]
                samples[name].append(positive.float().cpu())

        return record

    handles = [s.register_forward_hook(hook(n)) for n, s in sites]
    seen = 0
    try:
        with torch.no_grad():
            for batch in ([data] if isinstance(data, torch.Tensor) else data):
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                graph_module(x)
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise SnnconvError("calibration data is empty: pass a tensor or loader with at least one batch")
    for name, site in sites:
        if maxima[name] <= 0:
            raise SnnconvError(
                f"activation {name!r} never fired on the calibration data, so no threshold can be set: "
                "calibrate on more (or more varied) data"
            )
        if pct is None:
            site.threshold = maxima[name]
        else:
            values = torch.cat(samples[name])
            k = max(1, min(values.numel(), int(round(pct / 100 * values.numel()))))
            site.threshold = float(values.kthvalue(k).values)
    return graph_module

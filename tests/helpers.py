"""Test helpers: small models with spread-out thresholds, shared data lookup."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from snnconv.activations import QuantizedClip

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (tests read ../shared/data when it exists)")
    return path


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BN non-trivial statistics so folding is really exercised."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=generator) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=generator) * 0.4 - 0.1)


@torch.no_grad()
def spread_thresholds(model: nn.Module, x: torch.Tensor, quantile: float = 0.9) -> nn.Module:
    """Set each lambda to a quantile of its pre-activations, so the L levels are all used."""

    def hook(module, inputs):
        z = inputs[0].flatten()
        module.threshold.data.fill_(float(z.quantile(quantile)) + 1e-3)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, QuantizedClip)]
    model(x)
    for h in handles:
        h.remove()
    return model


def make_source(name: str, activation: str, levels: int = 4, seed: int = 0, dtype=torch.float64, in_channels: int = 1, size: int = 8, batch: int = 6):
    """A registered model with random BN statistics and data-spread lambdas, and its input."""
    from snnconv import create_model

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_model(name, activation=activation, levels=levels, in_channels=in_channels).eval()
    randomize_batchnorm(model, g)
    model = model.to(dtype)
    x = torch.rand(batch, in_channels, size, size, generator=g, dtype=torch.float64).to(dtype)
    return spread_thresholds(model, x), x


def spread_positive_thresholds(model, x, minimum: float = 0.05):
    """Data-spread lambdas (:func:`spread_thresholds`), kept at ``minimum`` or above."""
    from snnconv import ClipFloor, QCFS

    spread_thresholds(model, x)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (QCFS, ClipFloor)):
                m.threshold.clamp_(min=minimum)
    return model


ADVERSARIAL_LEVELS = 4


def ready_for_exactness(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """float64, eval, random BN statistics, data-spread positive lambdas (the adversarial tests' set-up)."""
    model = model.double().eval()
    randomize_batchnorm(model, torch.Generator().manual_seed(seed))
    return spread_positive_thresholds(model, x)


def gn_at_t1(model: nn.Module, x: torch.Tensor, **options) -> torch.Tensor:
    """GN with tau = L at T = 1: a QCFS (L = 4) source's output exactly."""
    from snnconv import convert

    return convert(model, "gn", group_size=ADVERSARIAL_LEVELS, **options)(x, 1)[0]


def cif_readout(model: nn.Module, x: torch.Tensor, sleep: int = 48) -> torch.Tensor:
    """CIF with T = L wake steps and ``sleep`` sleep steps: a clip-floor (L = 4) source's output exactly."""
    from snnconv import convert, simulate
    from snnconv.metrics import running_average

    out = simulate(convert(model, "cif"), x, ADVERSARIAL_LEVELS, sleep_steps=sleep)
    return running_average(out, wake_steps=ADVERSARIAL_LEVELS)[-1]



def assert_exact(build, x: torch.Tensor, seed: int = 0) -> None:
    """GN (QCFS source, T = 1) and CIF (clip-floor source, wake-sleep) reproduce the ANN
    built by ``build(activation_class)`` (float64 ``x``)."""
    from snnconv import ClipFloor, QCFS

    for act, run in ((QCFS, gn_at_t1), (ClipFloor, cif_readout)):
        torch.manual_seed(seed)
        model = ready_for_exactness(build(act), x)
        with torch.no_grad():
            expected = model(x.clone())
        got = run(model, x)
        assert torch.allclose(got, expected, atol=1e-10), (act.__name__, (got - expected).abs().max())

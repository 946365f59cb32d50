"""Hand-written models that once converted to wrong numbers (or crashed with a raw
traceback) without an error: each now converts exactly or is refused in one line.

Exactness references as in test_byom.py: a group neuron with tau = L at T = 1 computes
the QCFS ANN exactly; CIF with T = L wake steps and enough sleep steps ends at the
clip-floor ANN exactly.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import randomize_batchnorm, spread_thresholds
from snnconv import ClipFloor, QCFS, convert, simulate
from snnconv.errors import SnnconvError
from snnconv.metrics import running_average

L = 4


def _ready(model, x, seed=0):
    """float64, eval, random BN statistics, data-spread positive lambdas."""
    model = model.double().eval()
    randomize_batchnorm(model, torch.Generator().manual_seed(seed))
    spread_thresholds(model, x)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (QCFS, ClipFloor)):
                m.threshold.clamp_(min=0.05)
    return model


def _gn_t1(model, x, **kw):
    return convert(model, "gn", group_size=L, **kw)(x, 1)[0]


def _cif(model, x, sleep=48):
    return running_average(simulate(convert(model, "cif"), x, L, sleep_steps=sleep), wake_steps=L)[-1]


# a conv called at two places (shared weights), each call with its own BatchNorm ------

class SharedConv(nn.Module):
    """One conv applied twice (recurrent-style weight sharing), a BN per application;
    and a conv whose first call has a BN and second call has none."""

    def __init__(self, second_bn: bool):
        super().__init__()
        self.second_bn = second_bn
        self.stem, self.act0 = nn.Conv2d(2, 4, 3, padding=1), QCFS(L)
        self.shared, self.bn1, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.act1, self.act2, self.fc = QCFS(L), QCFS(L), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = self.act1(self.bn1(self.shared(self.act0(self.stem(x)))))
        h = self.shared(h)
        h = self.act2(self.bn2(h) if self.second_bn else h)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("second_bn", [True, False])
def test_a_shared_conv_keeps_each_calls_batchnorm(second_bn):
    torch.manual_seed(0)
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    model = _ready(SharedConv(second_bn), x)
    assert torch.allclose(_gn_t1(model, x), model(x), atol=1e-9)


# Linear -> BatchNorm1d on tokens [B, N, C]: BN normalises dim 1 (N), not the features --

class TokenBatchNorm(nn.Module):
    def __init__(self, tokens):
        super().__init__()
        self.mix, self.bn, self.act, self.head = nn.Linear(4, 4), nn.BatchNorm1d(tokens), QCFS(L), nn.Linear(4, 3)
        self.fc, self.bn_fc, self.act_fc = nn.Linear(4, 4), nn.BatchNorm1d(4), QCFS(L)

    def forward(self, x):  # x [B, N, 4]
        h = self.head(self.act(self.bn(self.mix(x)))).mean(1)  # tokens: BN over N
        return self.head(self.act_fc(self.bn_fc(self.fc(x.mean(1))))) + h  # [B, C]: BN over C (folded)


@pytest.mark.parametrize("tokens", [4, 5])  # N == C once fused along the features silently; N != C crashed
def test_batchnorm1d_over_tokens_after_a_linear(tokens):
    torch.manual_seed(1)
    x = torch.rand(3, tokens, 4, dtype=torch.float64)
    model = _ready(TokenBatchNorm(tokens), x)
    assert torch.allclose(_gn_t1(model, x), model(x), atol=1e-9)

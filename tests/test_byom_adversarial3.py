"""Third adversarial round: hand-written models that converted to wrong numbers (or
crashed with a raw traceback, or were refused though exact) without an error; each
now converts exactly or is refused in one line naming the user's module or op.

Exactness references as in test_byom.py: a group neuron with tau = L at T = 1 computes
the QCFS ANN exactly; CIF with T = L wake steps and enough sleep steps ends at the
clip-floor ANN exactly (it runs T + sleep steps folded into the batch, so it also
catches an op that mixes the batch with time).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import ADVERSARIAL_LEVELS as L
from helpers import cif_readout, gn_at_t1, ready_for_exactness
from snnconv import ClipFloor, QCFS, convert
from snnconv.errors import SnnconvError


def _exact(build, x, seed=0):
    """GN (QCFS source, T = 1) and CIF (clip-floor source, wake-sleep) reproduce the ANN."""
    for act, run in ((QCFS, gn_at_t1), (ClipFloor, cif_readout)):
        torch.manual_seed(seed)
        model = ready_for_exactness(build(act), x)
        with torch.no_grad():
            expected = model(x.clone())
        got = run(model, x)
        assert torch.allclose(got, expected, atol=1e-10), (act.__name__, (got - expected).abs().max())


def _refused(model, pattern):
    with pytest.raises(SnnconvError, match=pattern) as err:
        convert(model, "if")
    assert "\n" not in str(err.value)


class Tail(nn.Module):
    """conv -> BN -> act -> conv -> act, then ``tail(self, h, x)`` on the spikes."""

    def __init__(self, act, tail):
        super().__init__()
        self.tail = tail
        self.c1, self.bn, self.a1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), act(L)
        self.c2, self.a2, self.fc = nn.Conv2d(4, 4, 3, padding=1), act(L), nn.Linear(4, 3)

    def forward(self, x):
        h = self.a2(self.c2(self.a1(self.bn(self.c1(x)))))
        return self.tail(self, h, x)


X = torch.rand(3, 2, 6, 6, dtype=torch.float64)


# a reduction over dim=() is over every dim, the batch included -----------------------------

@pytest.mark.parametrize("spelling", [lambda h: h.sum(dim=()), lambda h: h.mean(()), lambda h: torch.sum(h, [])])
def test_a_reduction_over_an_empty_dim_list_is_over_the_batch(spelling):
    """Was: ``h.sum(dim=())`` (torch: all dims) read as "no dim", so a sum over the
    batch and time passed: CIF off by 1.6e3, no error."""
    _refused(Tail(QCFS, lambda s, h, x: s.fc(h.mean((2, 3))) + spelling(h)), r"^layer '(sum|mean)(_\d)?' \((sum|mean) over dim 0\)")


# axis= is numpy's name for dim= --------------------------------------------------------------

@pytest.mark.parametrize("tail", [
    lambda s, h, x: s.fc(h.mean(axis=(2, 3))),
    lambda s, h, x: s.fc(torch.sum(h, axis=-1).sum(axis=2) / 36),
    lambda s, h, x: s.fc(torch.cat([h, h], axis=1).mean((2, 3))[:, 2:6]),
    lambda s, h, x: s.fc(torch.cat(h.chunk(2, dim=1), axis=-3).mean(axis=[-1, -2]))])
def test_axis_keyword_converts_like_dim(tail):
    """Was refused as "mean over dim 0" (axis= unread, dim 0 assumed)."""
    _exact(lambda act: Tail(act, tail), X)


def test_axis_zero_is_still_refused():
    _refused(Tail(QCFS, lambda s, h, x: s.fc(torch.cat([h, h], axis=0).mean((2, 3)))), r"^layer 'cat' \(cat over dim 0\)")
    _refused(Tail(QCFS, lambda s, h, x: s.fc(h.mean((2, 3)).sum(axis=0, keepdim=True))), r"^layer 'sum(_\d)?' \(sum over dim 0\)")

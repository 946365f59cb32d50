"""Building blocks shared by the registered models."""
from __future__ import annotations

from torch import nn

from ..activations import make_activation


def conv_bn_act(cin: int, cout: int, activation: str, levels: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    """conv (no bias: BN supplies the shift) -> BatchNorm -> activation."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        make_activation(activation, levels),
    )

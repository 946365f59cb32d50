"""A small CNN for 8x8 (digits) and 28x28 (MNIST) inputs."""
from __future__ import annotations

from torch import nn

from ..activations import make_activation
from .blocks import conv_bn_act
from .registry import register_model


@register_model
def small_cnn(num_classes: int = 10, in_channels: int = 1, activation: str = "qcfs", levels: int = 4, width: int = 32) -> nn.Module:
    """conv(w)-conv(w)-avgpool-conv(2w)-avgpool-adaptive-avgpool(2)-fc(4w)-fc(classes).

    Input ``[batch, in_channels, H, W]`` with H, W >= 4; output ``[batch, num_classes]``.

    Raises:
        SnnconvError: an unknown ``activation``, or ``levels`` < 1 for qcfs and clipfloor.
    """
    return nn.Sequential(
        conv_bn_act(in_channels, width, activation, levels),
        conv_bn_act(width, width, activation, levels),
        nn.AvgPool2d(2),
        conv_bn_act(width, 2 * width, activation, levels),
        nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * width, 4 * width),
        make_activation(activation, levels),
        nn.Linear(4 * width, num_classes),
    )

"""ResNet-18/20/34 with average pooling: CIFAR stem (3x3 conv) or ImageNet stem (7x7, stride 2)."""
from __future__ import annotations

from torch import nn

from ..activations import make_activation
from .blocks import conv_bn_act
from .registry import register_model


class BasicBlock(nn.Module):
    """conv-bn-act-conv-bn (+ shortcut) -> act. The addition happens before the activation,
    so the spiking neuron after it integrates both branches."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str, levels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_act(cin, cout, activation, levels, stride),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = make_activation(activation, levels)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


def _resnet(blocks, widths, num_classes, in_channels, activation, levels, imagenet):
    if imagenet:
        stem = [conv_bn_act(in_channels, widths[0], activation, levels, stride=2, kernel=7), nn.AvgPool2d(3, 2, 1)]
    else:
        stem = [conv_bn_act(in_channels, widths[0], activation, levels)]
    layers, channels = list(stem), widths[0]
    for stage, (count, width) in enumerate(zip(blocks, widths)):
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            layers.append(BasicBlock(channels, width, stride, activation, levels))
            channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3, activation: str = "qcfs", levels: int = 4) -> nn.Module:
    """ResNet-20 for 32x32 inputs (3 stages of 3 blocks, widths 16-32-64).

    Raises:
        SnnconvError: an unknown ``activation``, or ``levels`` < 1 for qcfs and clipfloor.
    """
    return _resnet([3, 3, 3], [16, 32, 64], num_classes, in_channels, activation, levels, False)


@register_model
def resnet18(num_classes: int = 10, in_channels: int = 3, activation: str = "qcfs", levels: int = 4, imagenet: bool = False) -> nn.Module:
    """ResNet-18 (4 stages of 2 blocks, widths 64-512).

    Raises:
        SnnconvError: an unknown ``activation``, or ``levels`` < 1 for qcfs and clipfloor.
    """
    return _resnet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels, activation, levels, imagenet)


@register_model
def resnet34(num_classes: int = 10, in_channels: int = 3, activation: str = "qcfs", levels: int = 4, imagenet: bool = False) -> nn.Module:
    """ResNet-34 (stages of 3, 4, 6, 3 blocks, widths 64-512).

    Raises:
        SnnconvError: an unknown ``activation``, or ``levels`` < 1 for qcfs and clipfloor.
    """
    return _resnet([3, 4, 6, 3], [64, 128, 256, 512], num_classes, in_channels, activation, levels, imagenet)

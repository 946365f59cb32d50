"""VGG-11/16 with average pooling (CIFAR stem for 32x32, ImageNet head for 224x224)."""
from __future__ import annotations

from torch import nn

from ..activations import make_activation
from .blocks import conv_bn_act
from .registry import register_model

_CONFIGS = {
    11: [64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"],
    16: [64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P"],
    # A 6-conv VGG-style net that trains in minutes on 2 CPU cores.
    6: [32, 32, "P", 64, 64, "P", 128, 128, "P"],
}


def _vgg(depth, num_classes, in_channels, activation, levels, imagenet, width_divisor=1):
    layers: list[nn.Module] = []
    channels = in_channels
    for item in _CONFIGS[depth]:
        if item == "P":
            layers.append(nn.AvgPool2d(2))
        else:
            out = max(8, item // width_divisor)
            layers.append(conv_bn_act(channels, out, activation, levels))
            channels = out
    if imagenet:
        layers += [nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(channels * 49, 4096), make_activation(activation, levels),
                   nn.Linear(4096, 4096), make_activation(activation, levels), nn.Linear(4096, num_classes)]
    else:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


@register_model
def vgg6(num_classes: int = 10, in_channels: int = 3, activation: str = "qcfs", levels: int = 4) -> nn.Module:
    """Small VGG (6 convs, widths 32-128) for 32x32 inputs.

    Raises:
        SnnconvError: an unknown ``activation``, or ``levels`` < 1 for qcfs and clipfloor.
    """
    return _vgg(6, num_classes, in_channels, activation, levels, False)


@register_model
def vgg11(num_classes: int = 10, in_channels: int = 3, activation: str = "qcfs", levels: int = 4, imagenet: bool = False) -> nn.Module:
    """VGG-11 (BN, average pooling).

    Raises:
        SnnconvError: an unknown ``activation``, or ``levels`` < 1 for qcfs and clipfloor.
    """
    return _vgg(11, num_classes, in_channels, activation, levels, imagenet)


@register_model
def vgg16(num_classes: int = 10, in_channels: int = 3, activation: str = "qcfs", levels: int = 4, imagenet: bool = False) -> nn.Module:
    """VGG-16 (BN, average pooling).

    Raises:
        SnnconvError: an unknown ``activation``, or ``levels`` < 1 for qcfs and clipfloor.
    """
    return _vgg(16, num_classes, in_channels, activation, levels, imagenet)

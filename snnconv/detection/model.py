"""A single-scale, anchor-free YOLO-style detector built from the registry's blocks.

Layout of the one output tensor ``[batch, 5 + C, H, W]`` (raw, before any sigmoid), one
prediction per grid cell of stride ``STRIDE``:

    channels 0..3  box: (tx, ty, tw, th); centre = (cell + sigmoid(t)) * stride,
                   size = stride * exp(t)         (decoded by :func:`decode`)
    channel  4     objectness logit
    channels 5..   class logits (C of them)

A single tensor output is what lets :func:`snnconv.convert` and :func:`snnconv.simulate`
run the detector unchanged; every non-linearity of the read-out (sigmoid, exp, NMS)
lives outside the network, in :mod:`snnconv.detection.boxes`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SnnconvError
from ..models.blocks import conv_bn_act
from ..models.registry import register_model
from ..models.resnet import BasicBlock

STRIDE = 8  # the head's grid stride in input pixels (a stride-2 stem, two 2x poolings)
BOX_CHANNELS = slice(0, 4)
OBJ_CHANNEL = 4
CLS_START = 5
BACKBONES = ("vgg", "resnet")


class Backbone(nn.Module):
    """A stride-2 stem conv, then stages at strides 4 and 8, and one at 16; returns the
    (stride-8, stride-16) feature maps.

    ``vgg``: one conv-bn-act per stage; ``resnet``: one
    :class:`~snnconv.models.resnet.BasicBlock` per stage. Down-sampling after the stem
    is average pooling (max pooling has no faithful spiking form). The stem's stride-2
    conv keeps full-resolution work (and training time on a CPU) small.
    """

    def __init__(self, kind: str, in_channels: int, width: int, activation: str, levels: int) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Module:
            if kind == "vgg":
                return conv_bn_act(cin, cout, activation, levels)
            return BasicBlock(cin, cout, 1, activation, levels)

        self.to_stride8 = nn.Sequential(
            conv_bn_act(in_channels, width, activation, levels, stride=2),
            nn.AvgPool2d(2),
            stage(width, 2 * width),
            nn.AvgPool2d(2),
            stage(2 * width, 4 * width),
        )
        self.to_stride16 = nn.Sequential(nn.AvgPool2d(2), stage(4 * width, 8 * width))
        self.channels = (4 * width, 8 * width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c8 = self.to_stride8(x)
        return c8, self.to_stride16(c8)


class Neck(nn.Module):
    """Top-down fusion into one scale: upsample the stride-16 map (nearest), concatenate
    with the stride-8 map, mix with a 1x1 conv-bn-act."""

    def __init__(self, channels: tuple[int, int], out: int, activation: str, levels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.mix = conv_bn_act(channels[0] + channels[1], out, activation, levels, kernel=1)

    def forward(self, c8: torch.Tensor, c16: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([c8, self.up(c16)], dim=1))


class DecoupledHead(nn.Module):
    """YOLOX-style decoupled head: a regression branch (box + objectness) and a
    classification branch, each a 3x3 conv-bn-act then 1x1 convs; concatenated as
    ``[box(4), obj(1), cls(C)]``."""

    def __init__(self, channels: int, num_classes: int, activation: str, levels: int) -> None:
        super().__init__()
        self.reg = conv_bn_act(channels, channels, activation, levels)
        self.cls = conv_bn_act(channels, channels, activation, levels)
        self.box_out = nn.Conv2d(channels, 4, 1)
        self.obj_out = nn.Conv2d(channels, 1, 1)
        self.cls_out = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reg = self.reg(x)
        return torch.cat([self.box_out(reg), self.obj_out(reg), self.cls_out(self.cls(x))], dim=1)


class YOLODetector(nn.Module):
    """Backbone -> neck -> decoupled head; input ``[B, C_in, H, W]`` with H, W multiples of 16,
    output raw ``[B, 5 + num_classes, H / 8, W / 8]`` (layout in the module docstring)."""

    stride = STRIDE

    def __init__(self, num_classes: int, in_channels: int, backbone: str, width: int, activation: str, levels: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = Backbone(backbone, in_channels, width, activation, levels)
        neck_channels = 4 * width
        self.neck = Neck(self.backbone.channels, neck_channels, activation, levels)
        self.head = DecoupledHead(neck_channels, num_classes, activation, levels)
        self._init_objectness_bias()

    @torch.no_grad()
    def _init_objectness_bias(self, prior: float = 0.01) -> None:
        # Few cells hold an object: start objectness near that prior so early training is
        # not swamped by the background loss (the usual detector initialisation).
        self.head.obj_out.bias.fill_(float(torch.logit(torch.tensor(prior))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c8, c16 = self.backbone(x)
        return self.head(self.neck(c8, c16))


@register_model
def yolo_detector(
    num_classes: int = 10,
    in_channels: int = 3,
    activation: str = "qcfs",
    levels: int = 4,
    backbone: str = "vgg",
    width: int = 16,
) -> nn.Module:
    """Single-scale anchor-free YOLO-style detector (stride 8, decoupled head).

    Args:
        num_classes: C, object classes (no background class: objectness is separate).
        in_channels: image channels.
        activation: ``"qcfs"``, ``"clipfloor"`` or ``"relu"`` for every hidden layer.
        levels: L of the quantised activations.
        backbone: ``"vgg"`` (plain conv stack) or ``"resnet"`` (basic residual blocks).
        width: channels of the stem (stages 2x, 4x and 8x; neck and head 4x).

    Shapes: ``[B, in_channels, H, W]`` (H, W multiples of 16) -> ``[B, 5 + C, H/8, W/8]``.

    Raises:
        SnnconvError: ``backbone`` is unknown, or ``num_classes`` / ``width`` is not an
            integer >= 1.
    """
    if backbone not in BACKBONES:
        raise SnnconvError(f"unknown backbone {backbone!r}: choose one of {', '.join(BACKBONES)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise SnnconvError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not isinstance(width, int) or width < 1:
        raise SnnconvError(f"width must be an integer >= 1, got {width!r}")
    return YOLODetector(num_classes, in_channels, backbone, width, activation, levels)

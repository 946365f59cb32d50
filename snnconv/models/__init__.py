"""Registered models: small CNN, VGG and ResNet families (importing registers them).

The detector ``yolo_detector`` is registered lazily (see :mod:`snnconv.models.registry`).
"""
from . import resnet, small_cnn, vgg  # noqa: F401  (registration)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]

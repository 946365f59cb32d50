"""Registered models: small CNN, VGG and ResNet families (importing registers them)."""
from . import resnet, small_cnn, vgg  # noqa: F401  (registration)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]

from ..detection import model as _detector  # noqa: E402,F401  (registers yolo_detector)

"""The device a command runs on, from the user's ``--device``."""
from __future__ import annotations

import torch

from .errors import SnnconvError


def resolve_device(device: str) -> torch.device:
    """``'auto'`` picks CUDA when present; otherwise ``device`` as a ``torch.device``.

    Raises:
        SnnconvError: 'cuda' asked for without a visible GPU, or an unknown device name.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SnnconvError("--device cuda asked for, but no CUDA GPU is visible: use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise SnnconvError(f"unknown device {device!r}: use cpu, cuda or auto") from err

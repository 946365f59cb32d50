"""Checkpoints as safetensors: tensors plus JSON metadata, never code.

One file holds the model weights (``model.*``), optionally the optimizer state
(``optimizer.*``), and in its header the model name, constructor arguments, activation
settings and training progress, so the file alone rebuilds the model. Loading parses
a fixed binary layout; nothing is unpickled, so a hostile file cannot run code.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import SnnconvError
from .files import atomic_write
from .models import create_model
from .zoo import is_pretrained_name, pretrained_path

FORMAT = "snnconv-checkpoint-1"


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict, optimizer_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model``'s weights, ``meta`` (JSON-serialisable) and optional optimizer tensors atomically."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    for key, value in (optimizer_state or {}).items():
        tensors[f"optimizer.{key}"] = value.detach().contiguous().cpu()
    header = {"format": FORMAT, "meta": json.dumps(meta)}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=header))


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return (meta, model tensors, optimizer tensors), refusing anything that is not our format.

    ``path`` is a checkpoint file or the name of a zoo entry (:mod:`snnconv.zoo`)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists() and is_pretrained_name(str(path)):  # a zoo name: snnconv/zoo/<name>/checkpoint.safetensors
        path = pretrained_path(str(path))
    if not path.is_file():
        raise SnnconvError(f"checkpoint {str(path)!r} does not exist: pass the .safetensors file written by 'snnconv train'")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise SnnconvError(
            f"{str(path)!r} is not a readable safetensors checkpoint ({err}); it may be truncated or a pickle: "
            "snnconv only loads .safetensors files it wrote (pickles could run code)"
        ) from err
    if header.get("format") != FORMAT:
        raise SnnconvError(f"{str(path)!r} is a safetensors file but not an snnconv checkpoint (no '{FORMAT}' header)")
    try:
        meta = json.loads(header["meta"])
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), str) or not isinstance(meta.get("model_args"), dict):
            raise ValueError("meta must hold 'model' (str) and 'model_args' (object)")
    except (KeyError, ValueError) as err:
        raise SnnconvError(f"{str(path)!r} has malformed metadata ({err}): the checkpoint is damaged") from err
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_state = {k[len("optimizer.") :]: v for k, v in tensors.items() if k.startswith("optimizer.")}
    return meta, model_state, optim_state


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model stored in ``path`` (eval mode) and return it with its metadata."""
    meta, state, _ = read_checkpoint(path)
    model = create_model(meta["model"], **meta["model_args"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SnnconvError(f"{str(path)!r}: weights do not fit model {meta['model']!r} ({str(err).splitlines()[0]})") from err
    return model.eval(), meta

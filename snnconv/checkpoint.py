"""Checkpoints as safetensors: tensors plus JSON metadata, never code.

One file holds the model weights (``model.*``), optionally the optimizer state
(``optimizer.*``), and in its header the model name, constructor arguments, activation
settings and training progress, so the file alone rebuilds the model. Loading parses
a fixed binary layout; nothing is unpickled, so a hostile file cannot run code.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from .errors import SnnconvError
from .files import write_bytes
from .models import create_model
from .zoo import is_pretrained_name, pretrained_path

FORMAT = "snnconv-checkpoint-1"
CHECKSUM_KEY = "sha256"  # header entry: checkpoint_checksum() of the tensors and the meta text


def checkpoint_checksum(tensors: dict[str, torch.Tensor], meta_text: str) -> str:
    """SHA-256 (hex) over every tensor, in name order (name, dtype, shape, raw bytes), then ``meta_text``.

    Stored in the header by :func:`save_checkpoint` and checked by :func:`read_checkpoint`,
    so flipped bits anywhere in the tensor data or the metadata are caught on load.

    Raises:
        Nothing.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest.update(meta_text.encode())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict, optimizer_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model``'s weights, ``meta`` (JSON-serialisable) and optional optimizer tensors atomically.

    The file is serialised in memory (``safetensors.torch.save``) and written by
    :func:`snnconv.files.write_bytes` (own temporary, fsync, rename; usual permissions),
    with a SHA-256 of the tensors and metadata in the header.

    Raises:
        SnnconvError: ``path`` cannot be written (empty name, a folder, socket or block
            device in its place, no permission, a file where a folder should be, a full disk or
            a broken pipe), naming ``path`` and the fix.
        TypeError: ``meta`` is not JSON-serialisable (a programming error, not user input).
    """
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    for key, value in (optimizer_state or {}).items():
        tensors[f"optimizer.{key}"] = value.detach().contiguous().cpu()
    meta_text = json.dumps(meta)
    header = {"format": FORMAT, "meta": meta_text, CHECKSUM_KEY: checkpoint_checksum(tensors, meta_text)}
    return write_bytes(path, save(tensors, metadata=header))


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return (meta, model tensors, optimizer tensors), refusing anything that is not our format.

    ``path`` is a checkpoint file or the name of a zoo entry (:mod:`snnconv.zoo`).

    Raises:
        SnnconvError: ``path`` is a folder, does not exist, is not a readable safetensors
            file (truncated, a pickle), is a safetensors file without the snnconv header, fails
            its SHA-256 check, or has malformed metadata.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists() and is_pretrained_name(str(path)):  # a zoo name: snnconv/zoo/<name>/checkpoint.safetensors
        path = pretrained_path(str(path))
    if path.is_dir():
        inside = path / "checkpoint.safetensors"
        hint = f"pass {str(inside)!r}" if inside.is_file() else "pass the .safetensors file written by 'snnconv train'"
        raise SnnconvError(f"checkpoint {str(path)!r} is a folder, not a checkpoint file: {hint}")
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
    stored = header.get(CHECKSUM_KEY)  # checkpoints written before checksums have none
    if stored is not None and stored != checkpoint_checksum(tensors, header.get("meta", "")):
        raise SnnconvError(f"{str(path)!r} is corrupted: its tensors or metadata do not match the SHA-256 stored when it "
                           "was written; restore the file from a copy or train it again")
    try:
        meta = json.loads(header["meta"])
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), str) or not isinstance(meta.get("model_args"), dict):
            raise ValueError("meta must hold 'model' (str) and 'model_args' (object)")
    except (KeyError, ValueError) as err:
        raise SnnconvError(f"{str(path)!r} has malformed metadata ({err}): the checkpoint is damaged") from err
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_state = {k[len("optimizer.") :]: v for k, v in tensors.items() if k.startswith("optimizer.")}
    return meta, model_state, optim_state


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, meta: dict) -> None:
    """Raise :class:`SnnconvError` naming the first missing, unexpected or mis-shaped tensor
    (with both shapes) unless ``state`` loads into ``model`` exactly.

    Raises:
        SnnconvError: a tensor of ``model`` is missing from ``state``, has another shape
            (both shapes named), or ``state`` holds a tensor ``model`` lacks.
    """
    expected = model.state_dict()
    where = f"{str(path)!r}: model {meta.get('model')!r} built from its metadata (model_args {meta.get('model_args')})"
    for key, value in expected.items():
        if key not in state:
            raise SnnconvError(f"{where} has tensor {key!r}, which the file lacks: the metadata does not match the weights")
        if tuple(state[key].shape) != tuple(value.shape):
            raise SnnconvError(f"{where} expects {key!r} of shape {tuple(value.shape)}, the file holds {tuple(state[key].shape)}: "
                               "the metadata (e.g. width or num_classes) does not match the weights")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise SnnconvError(f"{where} has no tensor {extra[0]!r}, which the file holds: the metadata does not match the weights")


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model stored in ``path`` (eval mode) and return it with its metadata.

    Raises :class:`SnnconvError` for a missing, corrupted or foreign file, and for weights
    whose keys or shapes differ from the model the metadata describes (naming the key and
    both shapes).

    Raises:
        SnnconvError: as :func:`read_checkpoint` and :func:`check_state_fits`; also an
            unknown model name in the metadata (from :func:`snnconv.create_model`) and weights
            that ``load_state_dict`` still refuses.
    """
    meta, state, _ = read_checkpoint(path)
    model = create_model(meta["model"], **meta["model_args"])
    check_state_fits(model, state, path, meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SnnconvError(f"{str(path)!r}: weights do not fit model {meta['model']!r} ({str(err).splitlines()[0]})") from err
    return model.eval(), meta

"""Pretrained source ANNs shipped with the package: a small model zoo.

Each entry is a folder ``snnconv/zoo/<name>/`` holding ``checkpoint.safetensors`` (an
ordinary snnconv checkpoint), ``card.md`` (the exact training command, wall time,
machine, final and clip-limit accuracy, per-epoch curve) and ``train.log``. Wherever a
checkpoint path is accepted (``snnconv evaluate``, ``compare``, ``export``,
:func:`snnconv.checkpoint.load_checkpoint`) a zoo name works too:

    >>> from snnconv.zoo import list_pretrained, load_pretrained
    >>> model, meta = load_pretrained("resnet20_qcfs4_cifar10jpeg")   # doctest: +SKIP

The entries are trained on the lossy CIFAR-10 JPEG-q75 copy: their accuracies are
"CIFAR-10 (JPEG-q75)" numbers (see each card).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import SnnconvError

ZOO_DIR = Path(__file__).resolve().parent
CHECKPOINT_NAME = "checkpoint.safetensors"


def list_pretrained() -> list[str]:
    """Names of the zoo entries present in this installation (sorted).

    Raises:
        Nothing.
    """
    return sorted(p.parent.name for p in ZOO_DIR.glob(f"*/{CHECKPOINT_NAME}"))


def is_pretrained_name(text: str) -> bool:
    """True when ``text`` is a bare zoo name (no folder, no suffix) rather than a path.

    Raises:
        Nothing.
    """
    return bool(text) and "/" not in text and "\\" not in text and "." not in text


def pretrained_path(name: str, alternative: str = "or pass a checkpoint file") -> Path:
    """The checkpoint file of zoo entry ``name``.

    Raises SnnconvError naming the entries available when ``name`` is not one of them,
    followed by ``alternative`` (what the caller accepts besides a zoo name).

    Raises:
        SnnconvError: ``name`` is not an entry of this installation's zoo (the
            available entries are listed).
    """
    path = ZOO_DIR / name / CHECKPOINT_NAME
    if not is_pretrained_name(name) or not path.is_file():
        available = ", ".join(list_pretrained()) or "none in this installation"
        raise SnnconvError(f"no pretrained source named {name!r}: choose one of {available}, {alternative}")
    return path


def load_pretrained(name: str):
    """``(model, meta)`` of zoo entry ``name`` (eval mode), as :func:`snnconv.checkpoint.load_checkpoint`,
    which loads a checkpoint file (from ``snnconv train``) or a zoo name.

    Raises:
        SnnconvError: as :func:`pretrained_path` (the message names ``load_checkpoint``
            for a checkpoint file) and :func:`snnconv.checkpoint.load_checkpoint`.
    """
    from ..checkpoint import load_checkpoint

    return load_checkpoint(pretrained_path(name, f"or load a checkpoint file with snnconv.checkpoint.load_checkpoint({name!r})"))


__all__ = ["ZOO_DIR", "is_pretrained_name", "list_pretrained", "load_pretrained", "pretrained_path"]

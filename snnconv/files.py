"""Atomic file writes: a kill at any moment leaves the old file or the new one, never half of one.

A write goes to ``.NAME.XXXX.tmp`` beside the target, is fsynced and renamed over it.
A process killed mid-write (SIGKILL, power loss) leaves such a temporary behind; it is
never read (readers open the target name only) and :func:`remove_stale_temporaries`
deletes it when the owner of the folder (a training run) starts again.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import SnnconvError


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync, then rename it over ``path``.

    File-system failures (missing permission, a file where a folder should be, a full
    disk) become :class:`SnnconvError` naming the path.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise SnnconvError(f"cannot write {str(path)!r} ({err.strerror or err}): choose a writable output path") from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_folder(path.parent)
    except OSError as err:
        raise SnnconvError(f"cannot write {str(path)!r} ({err.strerror or err}): check the disk space and permissions") from err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete temporaries that a killed :func:`atomic_write` of ``path`` left behind.

    Only call this from the single process that owns ``path`` (e.g. a training run at
    start-up): a concurrent writer's temporary would be deleted too.
    """
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for stale in path.parent.glob(f"{_temporary_prefix(path)}*.tmp"):
            try:
                stale.unlink()
                removed.append(stale)
            except OSError:
                pass
    return removed


def write_json(path: str | Path, data) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    try:
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    except ValueError as err:
        raise SnnconvError(f"cannot write {str(path)!r}: the results hold NaN or inf ({err})") from err
    return atomic_write(path, lambda p: p.write_text(text))


def read_json(path: str | Path, what: str = "results JSON") -> dict:
    """Read a JSON object written by :func:`write_json`; data only, nothing is executed.

    Missing, unreadable or malformed files, NaN/Infinity literals and non-object tops
    raise :class:`SnnconvError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise SnnconvError(f"{what} {str(path)!r} does not exist: pass a file written with --json")

    def refuse_constant(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise SnnconvError(f"{str(path)!r} is not a readable {what} ({err}): pass a file written with --json") from err
    if not isinstance(data, dict):
        raise SnnconvError(f"{str(path)!r} holds a JSON {type(data).__name__}, not the {what} object")
    return data


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))

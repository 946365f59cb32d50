"""Writes that never destroy and never half-write, and checks of output locations before any work.

A write to a regular file (or to a name that does not exist yet) goes to
``.NAME.XXXXXXXX.tmp`` beside the file, is fsynced and renamed over it, so a kill at any
moment leaves the old file or the new one, never half of one. A symbolic link is written
*through*: the temporary sits beside the link's final target and replaces the target, so
the link stays a link. A character device (``/dev/stdout``, ``/dev/null``) or a FIFO is
written directly (renaming over it would destroy the device node). Nothing but a regular
file is ever renamed over: a folder, socket or block device as the output is an error.

A process killed mid-write leaves its temporary behind; it is never read (readers open
the target name only) and :func:`remove_stale_temporaries` deletes it when the owner of
the folder (a training run) starts again.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable

from .errors import SnnconvError

# Temporaries a killed writer can leave beside a target NAME: ours (.NAME.XXXXXXXX.tmp) and
# safetensors' own (.tmpXXXXXX, from save_file up to 0.8, which earlier snnconv versions used).
_SAFETENSORS_TEMPORARY = re.compile(r"\.tmp[0-9A-Za-z]{6}")


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def _name(path: str | Path) -> str:
    return repr(str(path))


def resolve_output(path: str | Path, what: str = "output") -> Path:
    """The file a write to ``path`` changes: symbolic links followed to their final target
    (which need not exist yet). An empty name raises :class:`SnnconvError`.

    Raises:
        SnnconvError: ``path`` is empty.
    """
    if str(path).strip() == "":
        raise SnnconvError(f"the {what} path is empty: give a file name")
    return Path(os.path.realpath(path))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _target_kind(path: Path, target: Path) -> str:
    """'new', 'file' (regular, replaced atomically) or 'stream' (FIFO / character device,
    written directly); anything else raises :class:`SnnconvError`."""
    try:
        mode = target.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # (a missing folder above it is reported when writing)
        return "new"
    except OSError as err:
        raise SnnconvError(f"cannot write {_name(path)} ({err.strerror or err}): choose another output path") from err
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return "stream"
    raise SnnconvError(f"cannot write {_name(path)}: it is {_kind(mode)}, not a file; give a file name")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file, then put its bytes at ``path``.

    A regular (or new) target: the temporary sits beside it (beside a symlink's target),
    is fsynced and renamed over it; it gets the replaced file's permissions, else
    ``0666 & ~umask``. A FIFO or character device: the bytes are copied into it directly.
    File-system failures (missing permission, a file where a folder should be, a full
    disk) and a folder, socket or block device as the target raise :class:`SnnconvError`
    naming ``path``.

    Raises:
        SnnconvError: ``path`` cannot be written (empty name, a folder, socket or block
            device in its place, no permission, a file where a folder should be, a full disk or
            a broken pipe), naming ``path`` and the fix.
        OSError from ``write`` itself is reported as SnnconvError; other exceptions from
        ``write`` propagate (the temporary is removed).
    """
    target = resolve_output(path)
    if _target_kind(path, target) == "stream":
        with tempfile.TemporaryDirectory(prefix="snnconv-") as folder:
            staged = Path(folder) / target.name
            try:
                write(staged)
            except OSError as err:
                raise SnnconvError(f"cannot write {_name(path)} ({err.strerror or err}): check the disk space") from err
            _copy_into_stream(path, target, staged)
        return Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise SnnconvError(f"cannot write {_name(path)} ({err.strerror or err}): choose a writable output path") from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        _install(path, target, tmp_path)
    except OSError as err:
        raise SnnconvError(f"cannot write {_name(path)} ({err.strerror or err}): check the disk space and permissions") from err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return Path(path)


def _install(path: str | Path, target: Path, tmp_path: Path) -> None:
    """fsync the finished temporary and rename it over ``target``, a regular file or nothing."""
    try:
        mode = stat.S_IMODE(target.stat().st_mode) if target.is_file() else 0o666 & ~_umask()
    except OSError:
        mode = 0o666 & ~_umask()
    os.chmod(tmp_path, mode)  # mkstemp makes 0600, and so may a writer that renames its own temporary
    with open(tmp_path, "rb") as f:
        os.fsync(f.fileno())
    if _target_kind(path, target) == "stream":  # became a FIFO/device meanwhile: never rename over it
        _copy_into_stream(path, target, tmp_path)
        return
    os.replace(tmp_path, target)
    _fsync_folder(target.parent)


def _copy_into_stream(path: str | Path, target: Path, source: Path) -> None:
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except OSError as err:
        raise SnnconvError(f"cannot write {_name(path)} ({err.strerror or err}): check the device or pipe") from err


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` as :func:`atomic_write` does (FIFOs and devices directly).

    Raises:
        SnnconvError: ``path`` cannot be written (empty name, a folder, socket or block
            device in its place, no permission, a file where a folder should be, a full disk or
            a broken pipe), naming ``path`` and the fix.
    """
    target = resolve_output(path)
    if _target_kind(path, target) == "stream":
        try:
            with open(target, "wb") as f:
                f.write(data)
        except OSError as err:
            raise SnnconvError(f"cannot write {_name(path)} ({err.strerror or err}): check the device or pipe") from err
        return Path(path)
    return atomic_write(path, lambda p: p.write_bytes(data))


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
    """Delete temporaries that a killed write of ``path`` left behind.

    Removes ``.NAME.*.tmp`` (:func:`atomic_write`'s) and ``.tmpXXXXXX`` (safetensors'
    ``save_file``, used by earlier versions) beside ``path``'s target. Only call this
    from the single process that owns the folder (e.g. a training run at start-up): a
    concurrent writer's temporary would be deleted too.

    Raises:
        Nothing: a temporary that cannot be deleted is skipped.
    """
    target = Path(os.path.realpath(path))
    removed = []
    if target.parent.is_dir():
        ours = set(target.parent.glob(f"{_temporary_prefix(target)}*.tmp"))
        theirs = {p for p in target.parent.glob(".tmp*") if _SAFETENSORS_TEMPORARY.fullmatch(p.name)}
        for stale in sorted(ours | theirs):
            try:
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink()
                    removed.append(stale)
            except OSError:
                pass
    return removed


def _probe_folder(folder: Path, path: str | Path, flag: str) -> None:
    """Create and delete a file in ``folder`` (root ignores permission bits: only trying tells)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".snnconv-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise SnnconvError(f"cannot write {flag} {_name(path)}: folder {_name(folder)} is not writable "
                           f"({err.strerror or err}); choose another {flag}") from err


def _nearest_existing(path: Path, original: str | Path, flag: str) -> Path:
    """The closest existing ancestor of ``path`` (``path`` itself if it exists); it must be a folder."""
    here = path
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise SnnconvError(f"cannot write {flag} {_name(original)}: {_name(here)} is a file where a folder should be; "
                           f"choose another {flag}")
    return here


def check_output_file(path: str | Path | None, flag: str = "--json") -> None:
    """Raise :class:`SnnconvError` now, before any work, if a result could not be written to ``path``.

    Checks: the name is not empty, is not a folder (or socket, block device), the folders
    above it can be created, and a file can be created beside the (symlink-resolved)
    target. FIFOs and character devices must be openable for writing. ``None`` passes.

    Raises:
        SnnconvError: ``path`` is empty, a folder, socket or block device, sits under a
            file where a folder should be, is in a folder where no file can be created, or is a
            FIFO / device without write permission.
    """
    if path is None:
        return
    if str(path).strip() == "":
        raise SnnconvError(f"{flag} is empty: give a file name, or leave {flag} out")
    target = resolve_output(path, flag)
    if _target_kind(path, target) == "stream":
        if not os.access(target, os.W_OK):
            raise SnnconvError(f"cannot write {flag} {_name(path)}: no permission to write to it; choose another {flag}")
        return
    _probe_folder(_nearest_existing(target.parent, path, flag), path, flag)


def check_output_folder(path: str | Path, flag: str = "--out") -> None:
    """Raise :class:`SnnconvError` now, before any work, unless files can be created in folder ``path``
    (it exists as a writable folder, or can be created under a writable one).

    Raises:
        SnnconvError: ``path`` is empty, is a file, sits under a file, or no file can be
            created in it (or in its nearest existing parent).
    """
    if str(path).strip() == "":
        raise SnnconvError(f"{flag} is empty: give a folder name")
    folder = Path(os.path.realpath(path))
    if folder.exists() and not folder.is_dir():
        raise SnnconvError(f"output folder {_name(path)} is a file: choose another {flag} folder")
    _probe_folder(_nearest_existing(folder, path, flag), path, flag)


def write_json(path: str | Path, data) -> Path:
    """Write ``data`` as indented JSON, atomically.

    Raises:
        SnnconvError: ``data`` holds NaN or inf, or ``path`` cannot be written (as
            :func:`write_bytes`).
        TypeError: ``data`` holds a value JSON cannot represent (a programming error).
    """
    try:
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    except ValueError as err:
        raise SnnconvError(f"cannot write {str(path)!r}: the results hold NaN or inf ({err})") from err
    return write_bytes(path, text.encode())


def read_json(path: str | Path, what: str = "results JSON") -> dict:
    """Read a JSON object written by :func:`write_json`; data only, nothing is executed.

    Missing, unreadable or malformed files, NaN/Infinity literals and non-object tops
    raise :class:`SnnconvError` naming the file.

    Raises:
        SnnconvError: ``path`` is a folder, does not exist, is not UTF-8, is not valid JSON
            (NaN / Infinity literals included), or its top level is not an object.
    """
    path = Path(path)
    if path.is_dir():
        raise SnnconvError(f"{what} {str(path)!r} is a folder: pass a file written with --json")
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
    """Write ``text`` (UTF-8) as :func:`write_bytes` does.

    Raises:
        SnnconvError: ``path`` cannot be written (empty name, a folder, socket or block
            device in its place, no permission, a file where a folder should be, a full disk or
            a broken pipe), naming ``path`` and the fix.
    """
    return write_bytes(path, text.encode("utf-8"))

"""N-MNIST event recordings turned into event-count frames.

File format (one recording per file, ``.bin`` in the original release, ``.bs2`` in
SLAYER's copy): 5 bytes per event, big-endian 40 bits: x (bits 39-32), y (31-24),
polarity (bit 23: 1 = ON), timestamp in microseconds (bits 22-0). An event with
y = 240 is a timestamp-overflow marker: it is dropped and 2**13 us is added to every
later event (the convention of the N-MNIST reference readers). The sensor is 34x34.

Frames: a recording's time span [first event, last event] is cut into
:data:`FRAMES` equal bins; frame t counts the events of each polarity (OFF, ON) at
each pixel in bin t, clipped to 255 and stored as uint8. So every existing model and
training path works unchanged, the frames are flattened into channels:
``images[n]`` is ``[2 * FRAMES, 34, 34]`` with channel ``2 * t + p``. ``mean = 0`` and
``std = 1 / 255`` per channel, so the normalized network input is the raw event count.

Layouts read (``--data-dir`` is the folder holding one of them):

- SLAYER's archive ``nmnist_small_slayer_1000train_100test.tar.gz`` (or any
  ``*.tar.gz`` with the same layout), read in place without extracting: files
  ``<root>/<id>.bs2`` and the label lists ``<root>/train1K.txt`` / ``test100.txt``
  (lines ``<id> <class>``; ``#`` starts a comment);
- the same tree extracted (the folder with the ``.txt`` lists, or its parent);
- the original release extracted: ``Train/<digit>/*.bin`` and ``Test/<digit>/*.bin``.
"""
from __future__ import annotations

import re
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import SnnconvError
from .registry import Dataset, register_dataset

FRAMES = 8
SENSOR = 34
OVERFLOW_Y = 240
OVERFLOW_US = 2**13
LIST_PATTERNS = {"train": re.compile(r"^train.*\.txt$"), "test": re.compile(r"^test.*\.txt$")}
ORIGINAL_FOLDERS = {"train": "Train", "test": "Test"}


def decode_events(raw: bytes, source: str = "recording") -> dict[str, np.ndarray]:
    """Decode N-MNIST 40-bit events: arrays ``x``, ``y``, ``p`` (0 OFF, 1 ON), ``t`` (int64 us).

    Raises:
        SnnconvError: ``raw`` is not a whole number of 5-byte events (truncated), or an
            event lies outside the 34x34 sensor.
    """
    if len(raw) % 5:
        raise SnnconvError(f"{source}: {len(raw)} bytes is not a whole number of 5-byte events: the file is truncated; extract it again")
    events = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 5).astype(np.int64)
    x, y = events[:, 0], events[:, 1]
    p = events[:, 2] >> 7
    t = ((events[:, 2] & 0x7F) << 16) | (events[:, 3] << 8) | events[:, 4]
    overflow = y == OVERFLOW_Y
    if overflow.any():
        t = t + np.cumsum(overflow) * OVERFLOW_US
        keep = ~overflow
        x, y, p, t = x[keep], y[keep], p[keep], t[keep]
    if x.size and (x.max() >= SENSOR or y.max() >= SENSOR):
        raise SnnconvError(f"{source}: pixel ({int(x.max())}, {int(y.max())}) is outside the 34x34 N-MNIST sensor: not an N-MNIST recording")
    return {"x": x, "y": y, "p": p, "t": t}


def events_to_frames(events: dict[str, np.ndarray], frames: int = FRAMES) -> np.ndarray:
    """Event counts ``[frames, 2, 34, 34]`` (uint8, clipped at 255) over equal bins of the recording's span.

    Raises:
        SnnconvError: ``frames`` < 1.
    """
    if frames < 1:
        raise SnnconvError(f"frames must be >= 1, got {frames}")
    out = np.zeros(frames * 2 * SENSOR * SENSOR, dtype=np.int64)
    t = events["t"]
    if t.size:
        start, span = t.min(), t.max() - t.min() + 1
        # Integer bin arithmetic: bin = floor((t - start) * frames / span), always in 0..frames-1.
        bins = (t - start) * frames // span
        flat = ((bins * 2 + events["p"]) * SENSOR + events["y"]) * SENSOR + events["x"]
        out += np.bincount(flat, minlength=out.size)
    return np.minimum(out, 255).astype(np.uint8).reshape(frames, 2, SENSOR, SENSOR)


def _parse_list(text: str, source: str) -> list[tuple[str, int]]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        try:
            entries.append((fields[0], int(fields[1])))
        except (IndexError, ValueError):
            raise SnnconvError(f"{source} line {number}: expected '<sample id> <class>', got {line!r}") from None
    if not entries:
        raise SnnconvError(f"{source} lists no samples: it is empty or damaged")
    return entries


class _ArchiveReader:
    """Every file of a ``.tar.gz`` by base name, read in one sequential pass (nothing is extracted).

    One pass, because seeking backwards in a gzip stream re-decompresses from the start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, bytes] = {}
        try:
            with tarfile.open(path, "r:gz") as tar:
                for member in tar:
                    if member.isfile():
                        self.files[Path(member.name).name] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise SnnconvError(f"cannot read {str(path)!r} ({err}): the archive is corrupt or truncated; copy it again") from err

    def names(self) -> list[str]:
        return list(self.files)

    def read(self, name: str) -> bytes:
        if name not in self.files:
            raise SnnconvError(f"{name!r} is missing from {str(self.path)!r}: the archive is incomplete; copy it again")
        return self.files[name]


class _FolderReader:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def names(self) -> list[str]:
        return [p.name for p in self.folder.iterdir() if p.is_file()]

    def read(self, name: str) -> bytes:
        path = self.folder / name
        if not path.is_file():
            raise SnnconvError(f"missing file {str(path)!r}: the N-MNIST folder is incomplete; extract it again")
        return path.read_bytes()


def _listed_recordings(reader, split: str, where: str) -> tuple[list[bytes], list[int], list[str]]:
    lists = sorted(n for n in reader.names() if LIST_PATTERNS[split].match(n))
    if not lists:
        raise SnnconvError(f"no {split} label list ({LIST_PATTERNS[split].pattern}) in {where}: not an N-MNIST folder or archive")
    entries = _parse_list(reader.read(lists[0]).decode("utf-8", "replace"), f"{where}/{lists[0]}")
    extension = ".bs2" if any(n.endswith(".bs2") for n in reader.names()) else ".bin"
    names = [f"{sample}{extension}" for sample, _ in entries]
    return [reader.read(n) for n in names], [label for _, label in entries], names


def _original_recordings(folder: Path) -> tuple[list[bytes], list[int], list[str]]:
    raws, labels, names = [], [], []
    for digit in range(10):
        for path in sorted((folder / str(digit)).glob("*.bin")):
            raws.append(path.read_bytes())
            labels.append(digit)
            names.append(str(path))
    if not raws:
        raise SnnconvError(f"no recordings under {str(folder)!r}: expected {folder.name}/<digit>/*.bin")
    return raws, labels, names


def load_nmnist_frames(data_dir: Path | None, split: str, frames: int = FRAMES) -> Dataset:
    """Load an N-MNIST split as event-count frames flattened into channels ``[N, 2 * frames, 34, 34]``.

    Raises:
        SnnconvError: no ``data_dir``; no N-MNIST archive, extracted tree or original
            folders under it; an archive is corrupt or incomplete; a label list is missing,
            empty or malformed; a recording is missing or damaged (see :func:`decode_events`);
            or labels are not digits 0..9.
    """
    if data_dir is None:
        raise SnnconvError("dataset 'nmnist' needs --data-dir: the folder with the N-MNIST archive or its extracted recordings")
    if (data_dir / ORIGINAL_FOLDERS[split]).is_dir():
        raws, labels, names = _original_recordings(data_dir / ORIGINAL_FOLDERS[split])
    else:
        folders = [data_dir] + sorted(p for p in data_dir.iterdir() if p.is_dir())
        listed = next((f for f in folders if any(LIST_PATTERNS[split].match(p.name) for p in f.iterdir() if p.is_file())), None)
        archives = sorted(data_dir.glob("*.tar.gz"))
        if listed is not None:
            raws, labels, names = _listed_recordings(_FolderReader(listed), split, str(listed))
        elif archives:
            raws, labels, names = _listed_recordings(_ArchiveReader(archives[0]), split, str(archives[0]))
        else:
            raise SnnconvError(
                f"no N-MNIST data under {str(data_dir)!r}: expected a SLAYER-style .tar.gz (N.bs2 + train*.txt/test*.txt), "
                "that tree extracted, or the original Train/<digit>/*.bin and Test/<digit>/*.bin folders"
            )
    if any(not 0 <= label <= 9 for label in labels):
        raise SnnconvError(f"N-MNIST labels must be digits 0..9 in {str(data_dir)!r}: the label list is damaged")
    images = np.stack([events_to_frames(decode_events(raw, name), frames) for raw, name in zip(raws, names)])
    channels = 2 * frames
    return Dataset(
        "nmnist",
        torch.from_numpy(images.reshape(len(raws), channels, SENSOR, SENSOR)),
        torch.tensor(labels, dtype=torch.int64),
        10,
        (0.0,) * channels,
        (1 / 255,) * channels,
    )


@register_dataset("nmnist")
def load_nmnist(data_dir: Path | None, split: str) -> Dataset:
    """N-MNIST as :data:`FRAMES` event-count frames per recording (read when called).

    Raises:
        SnnconvError: as :func:`load_nmnist_frames`.
    """
    return load_nmnist_frames(data_dir, split, FRAMES)

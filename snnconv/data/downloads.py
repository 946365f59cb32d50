"""Opt-in download of the small datasets, md5-verified (only ever called for ``--download``).

Nothing here runs at import time. Each file is fetched to a temporary file beside its
destination, its md5 compared with the published sum, and only then renamed into place;
on a mismatch or a failed transfer the temporary file is deleted and
:class:`SnnconvError` says what to do. Archives (CIFAR) are extracted into a temporary
folder that is renamed into place once complete, rejecting any member that would land
outside it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import SnnconvError


@dataclass(frozen=True)
class Remote:
    """One file to fetch: where from, its md5, and (for archives) the folder it extracts to."""

    url: str
    filename: str
    md5: str
    extracts_to: str | None = None


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # the mirror torchvision uses; yann.lecun.com often refuses
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_TORONTO = "https://www.cs.toronto.edu/~kriz/"

# Published md5 sums (the MNIST/Fashion-MNIST ones match shared/data/MD5SUMS).
DOWNLOADS: dict[str, list[Remote]] = {
    "mnist": [
        Remote(_MNIST + "train-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        Remote(_MNIST + "train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        Remote(_MNIST + "t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        Remote(_MNIST + "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ],
    "fashion_mnist": [
        Remote(_FASHION + "train-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        Remote(_FASHION + "train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        Remote(_FASHION + "t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        Remote(_FASHION + "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ],
    "cifar10": [Remote(_TORONTO + "cifar-10-python.tar.gz", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py")],
    "cifar100": [Remote(_TORONTO + "cifar-100-python.tar.gz", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python")],
}

_CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks.

    Raises:
        OSError: ``path`` cannot be read (callers check it exists first).
    """
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Copy ``url`` (http, https or file) to ``dest``. Tests replace this to stay offline.

    Raises:
        urllib.error.URLError, OSError: the download fails; :func:`download` turns these
            into SnnconvError.
    """
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)


def _fetch_verified(remote: Remote, data_dir: Path, log) -> Path:
    dest = data_dir / remote.filename
    if dest.is_file() and md5sum(dest) == remote.md5:
        return dest
    fd, tmp = tempfile.mkstemp(prefix=f".{remote.filename}.", suffix=".part", dir=data_dir)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        log(f"downloading {remote.url}")
        try:
            fetch(remote.url, tmp_path)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise SnnconvError(f"cannot download {remote.url} ({err}): check the network, or place {remote.filename} in {str(data_dir)!r} yourself") from err
        got = md5sum(tmp_path)
        if got != remote.md5:
            raise SnnconvError(
                f"md5 mismatch for {remote.filename} from {remote.url}: got {got}, expected {remote.md5}; "
                "the download is damaged or the mirror changed: run again, or fetch the file yourself and check its md5"
            )
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return dest


def _extract(archive: Path, folder: str, data_dir: Path) -> None:
    target = data_dir / folder
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=data_dir))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = Path(member.name)
                # Only plain files and folders strictly inside `folder/`: no links, no absolute or '..' paths.
                if name.is_absolute() or ".." in name.parts or not name.parts or name.parts[0] != folder:
                    raise SnnconvError(f"{str(archive)!r} holds an unexpected member {member.name!r}: not the official archive; delete it")
                if not (member.isfile() or member.isdir()):
                    raise SnnconvError(f"{str(archive)!r} holds a link or device {member.name!r}: not the official archive; delete it")
                if member.isfile():
                    out = staging.joinpath(*name.parts)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
        extracted = staging / folder
        if not extracted.is_dir():
            raise SnnconvError(f"{str(archive)!r} holds no {folder}/ folder: not the official archive; delete it")
        if target.exists():
            shutil.rmtree(target)  # an earlier, incomplete copy
        os.replace(extracted, target)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SnnconvError(f"cannot extract {str(archive)!r} ({err}): delete it and run with --download again") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download(name: str, data_dir: str | Path | None, log=print) -> Path:
    """Fetch dataset ``name`` into ``data_dir`` (md5-checked), skipping files already there and intact.

    Returns ``data_dir``, from which :func:`snnconv.data.load_dataset` then reads it.

    Raises:
        SnnconvError: ``name`` has no download source, ``data_dir`` is None, a file cannot
            be downloaded, its md5 does not match (the bad file is removed), or an archive holds
            unexpected members, links or devices, or cannot be extracted.
    """
    if name not in DOWNLOADS:
        raise SnnconvError(f"--download supports {', '.join(sorted(DOWNLOADS))}, not {name!r}: place the {name} files in --data-dir yourself")
    if data_dir is None:
        raise SnnconvError("--download needs --data-dir: the folder to download into")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for remote in DOWNLOADS[name]:
        if remote.extracts_to and (data_dir / remote.extracts_to).is_dir():
            continue  # already extracted; the loader checks its contents
        path = _fetch_verified(remote, data_dir, log)
        if remote.extracts_to:
            _extract(path, remote.extracts_to, data_dir)
    return data_dir

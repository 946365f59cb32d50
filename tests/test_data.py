"""Dataset loaders (CIFAR pickles, image folders, N-MNIST events), --download, --amp/--channels-last."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from snnconv import SnnconvError
from snnconv.cli import main
from snnconv.data import downloads as download_module
from snnconv.data import image_folder, load_dataset, nmnist
from snnconv.data.downloads import Remote, download
from snnconv.data.safe_pickle import RestrictedUnpickler
from snnconv.train import TrainConfig, train

from helpers import shared_data


# ---------------------------------------------------------------- CIFAR pickles

def _batch_pickle(data: np.ndarray, labels: list[int], label_key: str, numpy1: bool) -> bytes:
    """A batch dict pickled like the official files (protocol 2-3 GLOBAL opcodes, no code)."""
    raw = pickle.dumps({"batch_label": "generated", label_key: labels, "data": data, "filenames": ["x.png"] * len(labels)}, protocol=3)
    # The official files were written by numpy 1, which spells the module numpy.core.multiarray.
    return raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray") if numpy1 else raw


def _write_cifar(root, folder, files, label_key, num_classes, per_file=4, seed=0):
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True)
    expected = {}
    for i, name in enumerate(files):
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num_classes, per_file)]
        (root / folder / name).write_bytes(_batch_pickle(data, labels, label_key, numpy1=i % 2 == 0))
        expected[name] = (data, labels)
    return expected


def test_cifar10_and_cifar100_from_generated_pickles(tmp_path):
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    expected = _write_cifar(tmp_path, "cifar-10-batches-py", batches, "labels", 10)
    train_set = load_dataset("cifar10", "train", tmp_path)
    assert train_set.images.shape == (20, 3, 32, 32) and train_set.images.dtype == torch.uint8 and train_set.num_classes == 10
    first = expected["data_batch_1"][0][0]
    # Row layout: 1024 R, 1024 G, 1024 B values, each 32x32 row-major.
    assert torch.equal(train_set.images[0, 1], torch.from_numpy(first[1024:2048].reshape(32, 32)))
    assert train_set.labels.tolist() == sum((expected[b][1] for b in batches[:5]), [])
    test_set = load_dataset("cifar10", "test", tmp_path / "cifar-10-batches-py")  # the folder itself also works
    assert test_set.labels.tolist() == expected["test_batch"][1]

    expected = _write_cifar(tmp_path, "cifar-100-python", ["train", "test"], "fine_labels", 100)
    c100 = load_dataset("cifar100", "test", tmp_path)
    assert c100.num_classes == 100 and len(c100.mean) == 3 and c100.labels.tolist() == expected["test"][1]


def test_cifar_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}, protocol=2))
    with pytest.raises(SnnconvError, match=f"test_batch' refused: global {os.system.__module__}\\.system is not allowed in a dataset file"):
        load_dataset("cifar10", "test", tmp_path)
    assert not marker.exists()
    # Any other global is refused as well, even harmless-looking ones.
    for module, name in [("builtins", "eval"), ("numpy", "load"), ("numpy.core.multiarray", "scalar"), ("_codecs", "encode")]:
        with pytest.raises(pickle.UnpicklingError, match=f"^global {module}\\.{name} is not allowed in a dataset file$"):
            RestrictedUnpickler(io.BytesIO(b"")).find_class(module, name)


def test_cifar_truncated_corrupt_and_missing_files(tmp_path):
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    _write_cifar(tmp_path, "cifar-10-batches-py", batches, "labels", 10)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(SnnconvError, match=r"test_batch' \(pickle data was truncated\): the file is corrupt or truncated"):
        load_dataset("cifar10", "test", tmp_path)
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 5), np.uint8), "labels": [0, 1]}, protocol=3))
    with pytest.raises(SnnconvError, match="uint8 \\[N, 3072\\]"):
        load_dataset("cifar10", "test", tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(SnnconvError, match="missing file .*data_batch_3.*--download"):
        load_dataset("cifar10", "train", tmp_path)
    with pytest.raises(SnnconvError, match="cifar-100-python/test.*--download"):
        load_dataset("cifar100", "train", tmp_path)


# ---------------------------------------------------------------- ImageNet-style folders

def _image(path, width, height, color, center=None):
    from PIL import Image

    img = Image.new("RGB", (width, height), color)
    if center is not None:  # a block in the middle that the center crop must keep
        img.paste(center, (width // 2 - 4, height // 2 - 4, width // 2 + 4, height // 2 + 4))
    img.save(path)


def test_imagenet_folder_layout_order_resize_and_crop(tmp_path, monkeypatch):
    for split, per_class in (("train", 2), ("val", 1)):
        for cls, color in (("n02", (0, 0, 255)), ("n01", (255, 0, 0))):  # created out of order on purpose
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(per_class):
                _image(tmp_path / split / cls / f"img{i}.JPEG", 40 + 10 * i, 30, color, center=(0, 255, 0))
    monkeypatch.setattr(image_folder, "IMAGE_SIZE", 16)
    train_set = load_dataset("imagenet_folder", "train", tmp_path)
    assert train_set.images.shape == (4, 3, 16, 16) and train_set.num_classes == 2
    assert train_set.labels.tolist() == [0, 0, 1, 1]  # n01 (red) is class 0: sorted folder names
    assert train_set.images[0, 0, 0, 0] > 200 and train_set.images[2, 2, 0, 0] > 200  # red, then blue
    assert train_set.images[0, 1, 8, 8] > 200  # the green center survives the center crop
    val = load_dataset("imagenet_folder", "test", tmp_path)  # split "test" reads val/
    assert val.labels.tolist() == [0, 1]


def test_imagenet_folder_errors(tmp_path):
    with pytest.raises(SnnconvError, match="missing folder '.*train': imagenet_folder expects DATA_DIR/train/<class>"):
        image_folder.load_image_folder(tmp_path, "train", 8)
    (tmp_path / "train" / "a").mkdir(parents=True)
    _image(tmp_path / "train" / "a" / "ok.png", 10, 10, (1, 2, 3))
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(SnnconvError, match="broken.jpg.*corrupt or truncated"):
        image_folder.load_image_folder(tmp_path, "train", 8)
    (tmp_path / "val" / "zzz").mkdir(parents=True)
    with pytest.raises(SnnconvError, match="val' has classes missing from '.*train': zzz"):
        image_folder.load_image_folder(tmp_path, "test", 8)


# ---------------------------------------------------------------- N-MNIST

def _encode_events(x, y, p, t) -> bytes:
    """The N-MNIST 40-bit big-endian layout: x, y, polarity bit + 23-bit timestamp."""
    word = (np.asarray(x, np.uint64) << 32) | (np.asarray(y, np.uint64) << 24) | (np.asarray(p, np.uint64) << 23) | np.asarray(t, np.uint64)
    return b"".join(int(w).to_bytes(5, "big") for w in word)


def test_nmnist_event_decoding_and_frames():
    raw = _encode_events([0, 33, 5, 5], [0, 33, 7, 7], [1, 0, 1, 1], [100, 8_388_607, 200, 300])
    events = nmnist.decode_events(raw)
    assert events["x"].tolist() == [0, 33, 5, 5] and events["y"].tolist() == [0, 33, 7, 7]
    assert events["p"].tolist() == [1, 0, 1, 1] and events["t"].tolist() == [100, 8_388_607, 200, 300]
    # y = 240 is a timestamp-overflow marker: dropped, later events shifted by 2**13 us.
    overflowed = nmnist.decode_events(_encode_events([1, 0, 2], [1, 240, 2], [0, 0, 0], [10, 0, 20]))
    assert overflowed["t"].tolist() == [10, 20 + 2**13] and overflowed["x"].tolist() == [1, 2]

    events = nmnist.decode_events(_encode_events([1, 2, 2, 3], [4, 5, 5, 6], [0, 1, 1, 1], [0, 50, 60, 99]))
    frames = nmnist.events_to_frames(events, frames=2)  # span 100 us: bins [0, 50), [50, 100)
    assert frames.shape == (2, 2, 34, 34) and frames.dtype == np.uint8
    assert frames[0, 0, 4, 1] == 1 and frames[1, 1, 5, 2] == 2 and frames[1, 1, 6, 3] == 1 and frames.sum() == 4
    many = {k: np.repeat(v, 300) for k, v in events.items()}
    assert nmnist.events_to_frames(many, 1).max() == 255  # clipped, not wrapped
    assert nmnist.events_to_frames(nmnist.decode_events(b""), 3).sum() == 0

    with pytest.raises(SnnconvError, match=f"{len(raw) - 2} bytes is not a whole number of 5-byte events: the file is truncated"):
        nmnist.decode_events(raw[:-2])
    with pytest.raises(SnnconvError, match=r"pixel \(40, 1\) is outside the 34x34 N-MNIST sensor"):
        nmnist.decode_events(_encode_events([40], [1], [0], [5]))


def _recording(rng, n=50) -> bytes:
    return _encode_events(rng.integers(0, 34, n), rng.integers(0, 34, n), rng.integers(0, 2, n), np.sort(rng.integers(0, 300_000, n)))


def test_nmnist_archive_folder_and_original_layouts(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    tree = tmp_path / "tree" / "nmnist_small"
    tree.mkdir(parents=True)
    lists = {"train1K.txt": [(1, 5), (2, 0), (3, 4)], "test100.txt": [(60001, 7), (60002, 2)]}
    for name, entries in lists.items():
        (tree / name).write_text("#sample #class\n" + "".join(f"{i}\t{c}\n" for i, c in entries))
        for i, _ in entries:
            (tree / f"{i}.bs2").write_bytes(_recording(rng))
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "nmnist_small.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname="nmnist_small")
    monkeypatch.setattr(nmnist, "FRAMES", 3)
    from_archive = load_dataset("nmnist", "train", archive_dir)
    assert from_archive.images.shape == (3, 6, 34, 34) and from_archive.labels.tolist() == [5, 0, 4]
    from_folder = load_dataset("nmnist", "train", tmp_path / "tree")
    assert torch.equal(from_folder.images, from_archive.images)
    expected = nmnist.events_to_frames(nmnist.decode_events((tree / "1.bs2").read_bytes()), 3)
    assert torch.equal(from_folder.images[0], torch.from_numpy(expected.reshape(6, 34, 34)))  # channel 2t + p
    x = from_folder.normalized()
    assert torch.allclose(x, from_folder.images.float(), atol=1e-4)  # the network sees raw counts
    assert load_dataset("nmnist", "test", archive_dir).labels.tolist() == [7, 2]

    original = tmp_path / "original"
    for digit in (3, 8):
        (original / "Test" / str(digit)).mkdir(parents=True)
        (original / "Test" / str(digit) / "00001.bin").write_bytes(_recording(rng))
    assert load_dataset("nmnist", "test", original).labels.tolist() == [3, 8]

    (tree / "2.bs2").write_bytes((tree / "2.bs2").read_bytes()[:-3])
    with pytest.raises(SnnconvError, match=r"2\.bs2: \d+ bytes is not a whole number of 5-byte events: the file is truncated"):
        load_dataset("nmnist", "train", tmp_path / "tree")
    (archive_dir / "nmnist_small.tar.gz").write_bytes((archive_dir / "nmnist_small.tar.gz").read_bytes()[:200])
    with pytest.raises(SnnconvError, match=r"cannot read '.*nmnist_small\.tar\.gz' \(.*\): the archive is corrupt or"):
        load_dataset("nmnist", "train", archive_dir)
    with pytest.raises(SnnconvError, match="no N-MNIST data under '.*original': expected a SLAYER-style"):
        load_dataset("nmnist", "train", original)


def test_real_nmnist_archive():
    data = load_dataset("nmnist", "test", shared_data("nmnist_small"))
    assert data.images.shape == (100, 2 * nmnist.FRAMES, 34, 34)
    assert data.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the MNIST test labels
    assert data.images.float().sum((1, 2, 3)).min() > 100  # every recording has events
    sample = nmnist.decode_events(shared_data("nmnist_small", "tonic_sample_nmnist.bin").read_bytes())
    assert len(sample["t"]) == 4325 and 0 < sample["t"].max() < 400_000  # one ~0.3 s recording


# ---------------------------------------------------------------- --download

def _idx_gz(path, magic, dims, data: bytes) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + data)


def _mnist_mirror(tmp_path, n=6):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(1)
    for prefix, count in (("train", n), ("t10k", n)):
        _idx_gz(mirror / f"{prefix}-images-idx3-ubyte.gz", 0x803, (count, 28, 28), rng.integers(0, 256, count * 784, dtype=np.uint8).tobytes())
        _idx_gz(mirror / f"{prefix}-labels-idx1-ubyte.gz", 0x801, (count,), bytes(i % 10 for i in range(count)))
    return mirror, [Remote(p.as_uri(), p.name, hashlib.md5(p.read_bytes()).hexdigest()) for p in sorted(mirror.iterdir())]


def test_download_from_file_url_verifies_md5(tmp_path, monkeypatch):
    _, remotes = _mnist_mirror(tmp_path)
    monkeypatch.setitem(download_module.DOWNLOADS, "mnist", remotes)
    target = tmp_path / "data"
    download("mnist", target, log=lambda m: None)
    mirror = tmp_path / "mirror"
    for remote in remotes:  # every file arrived intact (its md5 is the one checked)
        (copy,) = target.rglob(remote.filename)
        assert copy.read_bytes() == (mirror / remote.filename).read_bytes()
    train_set = load_dataset("mnist", "train", target)
    assert train_set.images.shape == (6, 1, 28, 28)
    assert train_set.labels.tolist() == [i % 10 for i in range(6)]

    def no_network(url, dest):
        raise AssertionError("intact files must not be fetched again")

    monkeypatch.setattr(download_module, "fetch", no_network)
    download("mnist", target, log=lambda m: None)


def test_download_md5_mismatch_leaves_nothing(tmp_path, monkeypatch):
    _, remotes = _mnist_mirror(tmp_path)
    bad = [Remote(r.url, r.filename, "0" * 32) for r in remotes]
    monkeypatch.setitem(download_module.DOWNLOADS, "mnist", bad)
    target = tmp_path / "data"
    with pytest.raises(SnnconvError, match="md5 mismatch for .*expected 0{32}.*run again"):
        download("mnist", target, log=lambda m: None)
    assert list(target.iterdir()) == []  # neither the file nor a partial download
    with pytest.raises(SnnconvError, match="cannot download .*place .* yourself"):
        monkeypatch.setitem(download_module.DOWNLOADS, "mnist", [Remote((tmp_path / "nope.gz").as_uri(), "nope.gz", "0" * 32)])
        download("mnist", target, log=lambda m: None)
    assert list(target.iterdir()) == []
    with pytest.raises(SnnconvError, match="--download supports"):
        download("imagenet_folder", target)
    with pytest.raises(SnnconvError, match="needs --data-dir"):
        download("mnist", None)


def _tar_gz(path, members: dict[str, bytes]) -> Remote:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Remote(path.as_uri(), path.name, hashlib.md5(path.read_bytes()).hexdigest(), "cifar-10-batches-py")


def test_download_cifar_archive_extracts_safely(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    members = {f"cifar-10-batches-py/{b}": _batch_pickle(rng.integers(0, 256, (2, 3072), dtype=np.uint8), [1, 2], "labels", True)
               for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    monkeypatch.setitem(download_module.DOWNLOADS, "cifar10", [_tar_gz(tmp_path / "cifar-10-python.tar.gz", members)])
    target = tmp_path / "data"
    download("cifar10", target, log=lambda m: None)
    assert load_dataset("cifar10", "train", target).images.shape == (10, 3, 32, 32)

    evil = tmp_path / "evil"
    evil.mkdir()
    monkeypatch.setitem(download_module.DOWNLOADS, "cifar10", [_tar_gz(evil / "cifar-10-python.tar.gz", {"cifar-10-batches-py/../../escaped": b"x"})])
    with pytest.raises(SnnconvError, match="unexpected member"):
        download("cifar10", tmp_path / "evil_target", log=lambda m: None)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "evil_target" / "cifar-10-batches-py").exists()


def test_cli_download_only_when_asked(tmp_path, monkeypatch, capsys):
    mirror, remotes = _mnist_mirror(tmp_path, n=16)
    monkeypatch.setitem(download_module.DOWNLOADS, "mnist", remotes)
    calls = []
    real_fetch = download_module.fetch
    monkeypatch.setattr(download_module, "fetch", lambda url, dest: (calls.append(url), real_fetch(url, dest)))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    common = ["train", "--dataset", "mnist", "--data-dir", str(data_dir), "--model-arg", "width=4", "--epochs", "1", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 2  # no --download: missing files, nothing fetched
    assert "missing file" in capsys.readouterr().err and calls == []
    assert main(common + ["--out", str(tmp_path / "b"), "--download"]) == 0
    assert len(calls) == 4
    ckpt = str(tmp_path / "b" / "checkpoint.safetensors")
    assert main(["evaluate", ckpt, "--data-dir", str(data_dir), "--download", "-T", "1", "--no-progress"]) == 0
    assert len(calls) == 4  # already there and intact


# ---------------------------------------------------------------- --amp, --channels-last

def test_channels_last_trains_the_same_model_and_resumes_without_it(tmp_path):
    base = dict(dataset="digits", epochs=1, batch_size=256, seed=3, model_args={"width": 4})
    plain, _ = train(TrainConfig(**base), tmp_path / "plain", progress=False, log=lambda m: None)
    nhwc, meta = train(TrainConfig(**base, channels_last=True), tmp_path / "nhwc", progress=False, log=lambda m: None)
    assert meta["train_config"]["channels_last"] is True
    for (name, a), b in zip(plain.state_dict().items(), nhwc.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4), name  # same maths, other memory layout
    # A performance option: the same run may continue without it.
    _, resumed = train(TrainConfig(**{**base, "epochs": 1}), tmp_path / "nhwc", progress=False, log=lambda m: None)
    assert resumed["epochs_done"] == 1

"""Issue 18: files and commands that never destroy, never half-write, and fail before the work."""
from __future__ import annotations

import json
import math
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

import snnconv.experiments
import snnconv.train
from snnconv import SnnconvError, convert, create_model
from snnconv.checkpoint import CHECKSUM_KEY, FORMAT, load_checkpoint, read_checkpoint, save_checkpoint
from snnconv.cli import main
from snnconv.files import (atomic_write, check_output_file, check_output_folder, remove_stale_temporaries, write_bytes,
                           write_json)
from snnconv.metrics import running_average
from snnconv.train import CHECKPOINT_NAME, TrainConfig, train

QUIET = dict(progress=False, log=lambda m: None)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _one_line_error(capsys, *parts: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("snnconv: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_checkpoint(path: Path, activation: str = "qcfs", dataset: str = "digits", **meta_extra) -> Path:
    args = {"num_classes": 10, "in_channels": 1, "activation": activation, "levels": 4, "width": 4}
    torch.manual_seed(0)
    meta = {"model": "small_cnn", "model_args": args, "dataset": dataset, "activation": {"kind": activation, "levels": 4},
            "epochs_done": 1, "ann_accuracy": 0.1, **meta_extra}
    save_checkpoint(path, create_model("small_cnn", **args), meta)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _tiny_checkpoint(tmp_path_factory.mktemp("tiny") / CHECKPOINT_NAME)


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder no file can be created in, also for root (which ignores permission bits)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        yield folder
    else:  # root: permission bits do not stop it; sysfs refuses new files even to root
        os.close(fd)
        os.unlink(probe)
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without /sys: no folder is unwritable")
        yield Path("/sys/kernel")
    folder.chmod(0o755)


# ---- 1. atomic writes write through symlinks, stream into FIFOs and devices ----------------

class RenameAudit:
    """Wraps os.replace: records every destination and what it was just before the rename."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[str, str]] = []
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            try:
                mode = os.lstat(dst).st_mode
                kind = "file" if stat.S_ISREG(mode) else "NOT A REGULAR FILE"
            except FileNotFoundError:
                kind = "new"
            self.calls.append((str(dst), kind))
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)


def test_symlinks_are_written_through_to_their_target(tmp_path, monkeypatch):
    audit = RenameAudit(monkeypatch)
    real = tmp_path / "real" / "results.json"
    real.parent.mkdir()
    real.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    chain = tmp_path / "chain.json"
    chain.symlink_to(link)  # a link to a link
    write_json(chain, {"accuracy": 0.5})
    assert chain.is_symlink() and link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads(real.read_text()) == {"accuracy": 0.5}
    assert audit.calls == [(str(real), "file")]  # the temporary sat beside the target and replaced it
    assert sorted(os.listdir(tmp_path)) == ["chain.json", "link.json", "real"] and os.listdir(real.parent) == ["results.json"]
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "real" / "new.json")
    write_json(dangling, {"a": 1})
    assert dangling.is_symlink() and json.loads((tmp_path / "real" / "new.json").read_text()) == {"a": 1}
    # a checkpoint behind a symlink: written through, loads back
    ckpt_link = tmp_path / "ckpt.safetensors"
    ckpt_link.symlink_to(tmp_path / "real" / "c.safetensors")
    _tiny_checkpoint(ckpt_link)
    assert ckpt_link.is_symlink() and load_checkpoint(ckpt_link)[1]["model"] == "small_cnn"
    assert all(kind in ("file", "new") for _, kind in audit.calls)


def test_a_fifo_is_written_directly(tmp_path, monkeypatch):
    audit = RenameAudit(monkeypatch)
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_json(fifo, {"T": [1, 2]})
    reader.join(timeout=30)
    assert json.loads(received[0]) == {"T": [1, 2]}
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and audit.calls == []
    # a writer that needs a real file (atomic_write's callback) is staged and copied in
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    atomic_write(fifo, lambda p: p.write_bytes(b"staged"))
    reader.join(timeout=30)
    assert received[1] == b"staged" and stat.S_ISFIFO(os.lstat(fifo).st_mode) and audit.calls == []


def _char_device(tmp_path: Path, name: str, minor: int) -> Path:
    """A private copy of /dev/null (minor 3) or /dev/full (minor 7); the real node where mknod is not allowed."""
    path = tmp_path / name
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except (OSError, AttributeError):
        path = Path("/dev") / name
    assert stat.S_ISCHR(os.lstat(path).st_mode)
    return path


def test_character_devices_are_written_directly_never_replaced(tmp_path, monkeypatch):
    audit = RenameAudit(monkeypatch)
    null, full = _char_device(tmp_path, "null", 3), _char_device(tmp_path, "full", 7)
    inode = os.lstat(null).st_ino
    write_json(null, {"a": 1})
    atomic_write(null, lambda p: p.write_bytes(b"x"))
    _tiny_checkpoint(null)
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_ino == inode
    with pytest.raises(SnnconvError, match=f"cannot write {str(full)!r} .No space left on device"):
        write_json(full, {"a": 1})
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    assert audit.calls == []
    # the CLI: --json on a device writes into it and the node survives
    assert main(["evaluate", str(_tiny_checkpoint(tmp_path / "t.safetensors")), "-T", "1", "--limit", "4", "--no-progress",
                 "--json", str(null)]) == 0
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_ino == inode


def test_nothing_but_regular_files_is_ever_renamed_over(tmp_path, monkeypatch):
    audit = RenameAudit(monkeypatch)
    folder = tmp_path / "folder"
    folder.mkdir()
    sock_path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    try:
        for refused, kind in ((folder, "a folder"), (sock_path, "a socket")):
            for writer in (lambda p: write_json(p, {}), lambda p: write_bytes(p, b"x"), lambda p: _tiny_checkpoint(p)):
                with pytest.raises(SnnconvError, match=f"cannot write {str(refused)!r}: it is {kind}, not a file"):
                    writer(refused)
            with pytest.raises(SnnconvError, match=f"cannot write {str(refused)!r}: it is {kind}, not a file; give a file name"):
                check_output_file(refused)
        assert folder.is_dir() and stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    finally:
        server.close()
    (tmp_path / "regular.json").write_text("old")
    write_json(tmp_path / "regular.json", [1])
    write_json(tmp_path / "new.json", [2])
    assert audit.calls == [(str(tmp_path / "regular.json"), "file"), (str(tmp_path / "new.json"), "new")]


# ---- 2. the checkpoint temporary is ours; every leftover is cleaned ----------------------

def test_checkpoints_use_our_temporary_and_the_usual_permissions(tmp_path, monkeypatch):
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("save_file renames its own .tmpXXXXXX over the target: never used")

    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    before = os.umask(0o022)
    try:
        for mask in (0o022, 0o002, 0o077):
            os.umask(mask)
            path = _tiny_checkpoint(tmp_path / f"{mask:o}" / CHECKPOINT_NAME)
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
            assert os.listdir(path.parent) == [CHECKPOINT_NAME]
    finally:
        os.umask(before)
    # replacing a file keeps its permissions
    path = tmp_path / "22" / CHECKPOINT_NAME
    path.chmod(0o640)
    _tiny_checkpoint(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_every_leftover_temporary_pattern_is_removed(tmp_path):
    target = tmp_path / CHECKPOINT_NAME
    target.write_bytes(b"keep")
    stale = [f".{CHECKPOINT_NAME}.k2j4h5g6.tmp", ".tmpOjvS08", ".tmpAB12cd"]  # ours, safetensors' (0.4 - 0.8)
    kept = ["results.json", ".tmpfolder-x", ".tmp12345", ".other.safetensors.abc.tmp", "tmpOjvS08"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(target)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(kept + [CHECKPOINT_NAME])


def test_installed_safetensors_reads_what_we_write(tmp_path):
    """Our bytes are plain safetensors: safetensors' own reader (whichever version is installed) loads them."""
    import safetensors
    from safetensors.torch import load_file

    path = _tiny_checkpoint(tmp_path / "c.safetensors")
    tensors = load_file(str(path))
    model, _ = load_checkpoint(path)
    assert tensors.keys() == {f"model.{k}" for k in model.state_dict()}
    assert all(torch.equal(tensors[f"model.{k}"], v) for k, v in model.state_dict().items())
    major, minor = (int(v) for v in safetensors.__version__.split(".")[:2])
    assert (major, minor) >= (0, 4)


# ---- 3. a checksum of the tensors, checked on load -----------------------------------------

def _data_offset(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_flipped_bytes_in_the_tensor_data_are_caught(tmp_path, capsys):
    path = _tiny_checkpoint(tmp_path / "c.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert len(f.metadata()[CHECKSUM_KEY]) == 64
    blob = bytearray(path.read_bytes())
    start = _data_offset(path)
    for offset in (start, start + (len(blob) - start) // 2, len(blob) - 1):
        corrupted = bytearray(blob)
        corrupted[offset] ^= 0x10
        bad = tmp_path / f"bad{offset}.safetensors"
        bad.write_bytes(bytes(corrupted))
        with pytest.raises(SnnconvError, match=f"{str(bad)!r} is corrupted"):
            load_checkpoint(bad)
    assert main(["evaluate", str(bad), "-T", "1", "--no-progress"]) == 2
    _one_line_error(capsys, f"{str(bad)!r} is corrupted")


def test_checkpoints_without_a_checksum_still_load(tmp_path):
    """Files written before checksums (plain save_file, no sha256 entry) load as before."""
    from safetensors.torch import save_file

    fresh = _tiny_checkpoint(tmp_path / "new.safetensors")
    meta, state, _ = read_checkpoint(fresh)
    old = tmp_path / "old.safetensors"
    save_file({f"model.{k}": v for k, v in state.items()}, str(old), metadata={"format": FORMAT, "meta": json.dumps(meta)})
    model, old_meta = load_checkpoint(old)
    x = torch.rand(3, 1, 8, 8)
    assert old_meta == meta and torch.equal(model(x), load_checkpoint(fresh)[0](x))


# ---- 4. a diverging run stops at the first non-finite loss ----------------------------------

def test_divergence_stops_at_the_first_nonfinite_loss_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = TrainConfig(epochs=3, batch_size=128, seed=2, train_limit=512, model_args={"width": 4})  # 4 steps per epoch
    calls = []
    real = snnconv.train.F.cross_entropy

    def nan_at_step_6(*args, **kwargs):  # epoch 2, step 2
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 6 else loss

    monkeypatch.setattr(snnconv.train.F, "cross_entropy", nan_at_step_6)
    out = tmp_path / "run"
    with pytest.raises(SnnconvError) as caught:
        train(config, out, **QUIET)
    message = str(caught.value)
    assert "the loss became nan at epoch 2, step 2 of 4" in message and "lower --lr" in message, message
    assert f"the checkpoint of epoch 1 in {str(out / CHECKPOINT_NAME)!r} is kept" in message
    meta, state, _ = read_checkpoint(out / CHECKPOINT_NAME)
    assert meta["epochs_done"] == 1 and all(torch.isfinite(t).all() for t in state.values())


def test_weights_that_become_nonfinite_after_a_finite_loss_are_caught_before_the_checkpoint(tmp_path, monkeypatch):
    config = TrainConfig(epochs=2, batch_size=128, seed=2, train_limit=512, model_args={"width": 4})  # 4 steps per epoch
    real, steps = torch.optim.SGD.step, []

    def step_then_blow_up(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 4:  # the last step of epoch 1: its loss was finite
            self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", step_then_blow_up)
    with pytest.raises(SnnconvError, match="the weights became non-finite during epoch 1;.*no checkpoint was written"):
        train(config, tmp_path, **QUIET)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_cli_huge_learning_rate_stops_with_one_line_and_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--lr", "1e6", "--epochs", "2", "--train-limit", "1024", "--model-arg", "width=4", "--no-progress",
            "--out", str(out)]
    assert main(argv) == 2
    # the loss or, first, the weights (through lambda's decay) become non-finite in epoch 1
    err = _one_line_error(capsys, "training diverged: the", "epoch 1", "--lr 1e+06", "no checkpoint was written")
    assert not (out / CHECKPOINT_NAME).exists(), err


# ---- 5. every output location is checked before the work ------------------------------------

@pytest.fixture
def no_work(monkeypatch):
    """Any dataset load, training or simulation fails the test: the command must stop before."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the output location was checked")

    for module, name in ((snnconv.train, "load_dataset"), (snnconv.experiments, "load_evaluation"),
                         (snnconv.experiments, "run_method"), (snnconv.report, "load_evaluation")):
        monkeypatch.setattr(module, name, forbidden)


import snnconv.report  # noqa: E402  (patched by no_work)


def test_unwritable_outputs_fail_before_any_work(tiny, tmp_path, unwritable, no_work, capsys):
    inside = unwritable / "sub" / "x"
    cases = [
        (["train", "--epochs", "1", "--no-progress", "--out", str(inside)], "cannot write --out"),
        (["evaluate", str(tiny), "-T", "1", "--json", str(inside / "r.json")], "cannot write --json"),
        (["compare", str(tiny), "-T", "1", "--out", str(inside)], "cannot write --out"),
        (["export", str(tiny), "--input-shape", "1,8,8", "--out", str(inside / "g.nir")], "cannot write --out"),
        (["evaluate", str(tiny), "-T", "1", "--json", ""], "--json is empty"),
        (["evaluate", str(tiny), "-T", "1", "--json", str(tmp_path)], "it is a folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        _one_line_error(capsys, message)
    with pytest.raises(SnnconvError, match="cannot write --out"):
        train(TrainConfig(epochs=1), inside, **QUIET)
    assert not inside.exists()


def test_output_checks_accept_what_can_be_written(tmp_path):
    check_output_file(tmp_path / "a" / "b" / "r.json")  # folders to be created
    check_output_folder(tmp_path / "new" / "out")
    assert not (tmp_path / "a").exists() and not (tmp_path / "new").exists()  # checking creates nothing
    check_output_file(None)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SnnconvError, match="is a file where a folder should be"):
        check_output_file(blocker / "r.json")
    with pytest.raises(SnnconvError, match="is a file: choose another --out folder"):
        check_output_folder(blocker)


# ---- 6. errors that name the field; extending a finished run ---------------------------------

def test_resume_errors_name_every_differing_field(tmp_path):
    config = TrainConfig(epochs=1, batch_size=256, model_args={"width": 4}, train_limit=256)
    train(config, tmp_path, **QUIET)
    other = TrainConfig(epochs=1, batch_size=128, seed=3, model_args={"width": 4}, train_limit=256)
    with pytest.raises(SnnconvError, match=r"\(batch_size: 256 in the checkpoint, 128 now, seed: 0 in the checkpoint, 3 now\)"):
        train(other, tmp_path, **QUIET)


def test_extending_a_finished_run_follows_the_new_cosine_and_resumes_exactly(tmp_path):
    base = dict(batch_size=256, seed=4, model_args={"width": 4}, train_limit=512)
    out = tmp_path / "run"
    train(TrainConfig(epochs=1, **base), out, **QUIET)
    snapshot = (out / CHECKPOINT_NAME).read_bytes()
    logs = []
    extended, meta = train(TrainConfig(epochs=3, **base), out, progress=False, log=logs.append)
    restart = 0.05 * 0.5 * (1 + math.cos(math.pi / 3))
    assert logs[0] == "resuming from epoch 1 of 3"
    assert logs[1].startswith("extending the finished 1-epoch run to 3 epochs") and f"restarts at {restart:.4g} (not 0)" in logs[1]
    assert meta["epochs_done"] == 3 and meta["schedule_extensions"] == [{"from_epochs": 1, "to_epochs": 3}]
    assert meta["train_config"]["epochs"] == 3 and [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    # the same extension interrupted after epoch 2 and resumed gives the same weights
    again = tmp_path / "again"
    again.mkdir()
    (again / CHECKPOINT_NAME).write_bytes(snapshot)

    def stop_after_2(message):  # logged before epoch 3's checkpoint: epoch 2's is on disk
        if message.startswith("epoch 3/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(epochs=3, **base), again, progress=False, log=stop_after_2)
    logs = []
    resumed, meta2 = train(TrainConfig(epochs=3, **base), again, progress=False, log=logs.append)
    assert logs[0] == "resuming from epoch 2 of 3" and not logs[1].startswith("extending")
    assert meta2["schedule_extensions"] == meta["schedule_extensions"]
    for key, value in extended.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    # epochs 2-3 use the same lr(step) as a straight 3-epoch run; epoch 1 (total 1, not 3) differs, so the weights do
    straight, _ = train(TrainConfig(epochs=3, **base), tmp_path / "straight", **QUIET)
    assert any(not torch.equal(v, extended.state_dict()[k]) for k, v in straight.state_dict().items())


def test_unfinished_or_shortened_runs_cannot_change_epochs(tmp_path):
    base = dict(batch_size=256, seed=4, model_args={"width": 4}, train_limit=256)
    out = tmp_path / "run"

    def stop_after_1(message):  # logged before epoch 2's checkpoint: epoch 1's is on disk
        if message.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(epochs=3, **base), out, progress=False, log=stop_after_1)
    with pytest.raises(SnnconvError, match="holds a run stopped at epoch 1 of 3: resume it with --epochs 3"):
        train(TrainConfig(epochs=5, **base), out, **QUIET)
    train(TrainConfig(epochs=3, **base), out, **QUIET)
    with pytest.raises(SnnconvError, match="holds a finished 3-epoch run; --epochs 2 would shorten it"):
        train(TrainConfig(epochs=2, **base), out, **QUIET)


def test_metadata_shape_mismatch_names_the_key_and_both_shapes(tmp_path, capsys):
    args = {"num_classes": 10, "in_channels": 1, "activation": "qcfs", "levels": 4, "width": 4}
    state = create_model("small_cnn", **args).state_dict()
    first = next(iter(state))
    for change, expected in (({"width": 8}, first), ({"num_classes": 3}, None)):
        model = create_model("small_cnn", **args)
        meta = {"model": "small_cnn", "model_args": {**args, **change}, "dataset": "digits",
                "activation": {"kind": "qcfs", "levels": 4}}
        path = tmp_path / f"{next(iter(change))}.safetensors"
        save_checkpoint(path, model, meta)
        wanted = create_model("small_cnn", **meta["model_args"]).state_dict()
        key = expected or next(k for k in state if state[k].shape != wanted[k].shape)
        with pytest.raises(SnnconvError) as caught:
            load_checkpoint(path)
        message = str(caught.value)
        assert (f"expects {key!r} of shape {tuple(wanted[key].shape)}, the file holds {tuple(state[key].shape)}" in message), message
        assert main(["evaluate", str(path), "-T", "1", "--no-progress"]) == 2
        _one_line_error(capsys, key)


def test_a_folder_passed_as_the_checkpoint_is_named(tiny, tmp_path, capsys):
    assert main(["evaluate", str(tiny.parent), "-T", "1", "--no-progress"]) == 2
    _one_line_error(capsys, f"checkpoint {str(tiny.parent)!r} is a folder", f"pass {str(tiny)!r}")
    with pytest.raises(SnnconvError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


# ---- 7. tracebacks to one line ----------------------------------------------------------

@pytest.mark.parametrize("shape,message", [
    ("3,8,8", "takes 1 input channel(s), not 3"),
    ("1,28", "three integers >= 1"),
    ("0,0,0", "three integers >= 1"),
    ("1,x,8", "comma-separated integers"),
    ("1,1,1", "--input-shape 1,1,1 does not fit model 'small_cnn'"),
])
def test_export_input_shape_errors_are_one_line(tiny, tmp_path, shape, message, capsys):
    pytest.importorskip("nir")
    assert main(["export", str(tiny), "--input-shape", shape, "--out", str(tmp_path / "g.nir")]) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "g.nir").exists()


def test_export_warning_is_one_line(tiny, tmp_path):
    """NIRSemanticsWarning reaches the terminal as one line, not Python's file:line form with
    the source line after it; --debug keeps Python's form."""
    pytest.importorskip("nir")
    command = [sys.executable, "-m", "snnconv", "export", str(tiny), "--input-shape", "1,8,8", "--out", str(tmp_path / "g.nir")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith("snnconv: warning: NIR IF nodes reset to v_reset") and run.stderr.count("\n") == 1, run.stderr
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True, timeout=300, env=env)
    assert debug.returncode == 0 and "NIRSemanticsWarning: NIR IF nodes" in debug.stderr and "nir.py:" in debug.stderr, debug.stderr


def test_export_without_data_dir_names_input_shape(tmp_path, capsys):
    pytest.importorskip("nir")
    ckpt = _tiny_checkpoint(tmp_path / "mnist.safetensors", dataset="mnist")
    assert main(["export", str(ckpt), "--out", str(tmp_path / "g.nir")]) == 2
    _one_line_error(capsys, "needs --data-dir", "or pass --input-shape C,H,W")
    assert main(["export", str(ckpt), "--input-shape", "1,8,8", "--out", str(tmp_path / "g.nir")]) == 0
    assert (tmp_path / "g.nir").stat().st_size > 0


def test_redraw_of_a_binary_or_incomplete_results_json_is_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    results = tmp_path / "results.json"
    results.write_bytes(bytes(range(256)))
    assert main(["compare", "x", "--out", str(tmp_path), "--redraw"]) == 2
    _one_line_error(capsys, f"{str(results)!r} is not a readable results JSON")
    good = {"dataset": "digits", "model": "small_cnn", "ann_accuracy": 0.9,
            "runs": [{"neuron": "if", "options": {}, "T": [1], "accuracy": [0.5], "latency_steps": [1]}]}
    for broken, key in (({k: v for k, v in good.items() if k != "ann_accuracy"}, "'ann_accuracy'"),
                        ({**good, "runs": [{"neuron": "if", "T": [1], "accuracy": [0.5]}]}, "run 0 lacks the key 'latency_steps'"),
                        ({**good, "runs": [{**good["runs"][0], "accuracy": "high"}]}, "malformed entry")):
        results.write_text(json.dumps(broken))
        assert main(["compare", "x", "--out", str(tmp_path), "--redraw"]) == 2
        _one_line_error(capsys, key)
    results.write_text(json.dumps(good))
    assert main(["compare", "x", "--out", str(tmp_path), "--redraw"]) == 0
    assert "| if | 1 | 1 | 50.00 |" in (tmp_path / "report.md").read_text()


def test_debug_is_accepted_after_the_subcommand(tmp_path):
    for argv in (["--debug", "evaluate", str(tmp_path / "none")], ["evaluate", str(tmp_path / "none"), "--debug"]):
        with pytest.raises(SnnconvError, match="checkpoint '.*none' does not exist: pass the .safetensors file"):
            main(argv)
    assert main(["evaluate", str(tmp_path / "none")]) == 2


@pytest.mark.parametrize("extra,message", [
    (["-T", "1,,2"], "no empty entries"),
    (["-T", "1,2,"], "no empty entries"),
    (["--seeds", "1,,2"], "no empty entries"),
    (["--calibrate", "150"], "--calibrate applies to ReLU sources only"),
    (["--calibrate", "max"], "--calibrate applies to ReLU sources only"),
])
def test_malformed_or_misapplied_method_options_are_refused(tiny, extra, message, capsys, no_work):
    assert main(["evaluate", str(tiny), "--limit", "4", "--no-progress", *(["-T", "1"] if "-T" not in extra else []), *extra]) == 2
    _one_line_error(capsys, message)


def test_calibrate_percentile_out_of_range_is_refused_on_relu_sources(tmp_path, capsys, no_work):
    relu = _tiny_checkpoint(tmp_path / "relu.safetensors", activation="relu")
    for value in ("150", "0", "abc"):
        assert main(["evaluate", str(relu), "-T", "1", "--calibrate", value, "--no-progress"]) == 2
        _one_line_error(capsys, "calibration")
    model = create_model("small_cnn", width=4).eval()
    with pytest.raises(SnnconvError, match=r"percentile must be in \(0, 100\], got 150"):
        convert(model, "if", calibration_method=150)  # refused even with nothing to calibrate


def test_calibrate_on_a_relu_source_still_works(tmp_path, capsys):
    relu = _tiny_checkpoint(tmp_path / "relu.safetensors", activation="relu")
    assert main(["evaluate", str(relu), "-T", "4", "--calibrate", "max", "--limit", "8", "--no-progress"]) == 0
    assert main(["evaluate", str(relu), "-T", "4", "--limit", "8", "--no-progress"]) == 0


def test_running_average_refuses_zero_wake_steps():
    out = torch.ones(4, 2, 3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(SnnconvError, match="wake_steps must be None or an integer >= 1"):
            running_average(out, wake_steps=bad)
    assert torch.equal(running_average(out, wake_steps=2)[:, 0, 0], torch.tensor([1.0, 1.0, 1.5, 2.0]))

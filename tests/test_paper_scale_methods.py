"""bench/paper_scale.py --methods: tiny runs (30 images, T = 1, 2) on the zoo sources."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers import shared_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import paper_scale  # noqa: E402


def _args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--steps", "1,2", "--seeds", "0", "--limit", "30", "--permute-limit", "20",
            "--no-progress", "--no-spikingjelly", "--out", str(out), *extra]


@pytest.fixture
def counted(monkeypatch):
    """Counts run_method calls (the work --methods must not start on a refused run)."""
    calls = []
    real = paper_scale.run_method

    def run_method(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(paper_scale, "run_method", run_method)
    return calls


def test_a_pattern_that_matches_no_row_is_refused_before_any_work(tmp_path, counted):
    data = shared_data("cifar10")
    with pytest.raises(SystemExit, match=r"--methods 'tpp' matches no row \(the rows: qcfs: 'IF', 'GN tau=2', .*'TPP'\)"):
        paper_scale.main(_args(data, tmp_path / "ps", "--sources", "qcfs", "--methods", "tpp"))
    assert counted == [] and not (tmp_path / "ps.json").exists()


def test_a_table_of_other_images_or_permutation_images_is_refused_before_any_work(tmp_path, counted):
    data = shared_data("cifar10")
    paper_scale.main(_args(data, tmp_path / "ps", "--sources", "qcfs"))
    before, counted[:] = (tmp_path / "ps.json").read_text(), []
    with pytest.raises(SystemExit, match="--methods adds rows to qcfs's 30-image table; this run has 25 images: pass --limit 30"):
        paper_scale.main(_args(data, tmp_path / "ps", "--sources", "qcfs", "--methods", "TPP", "--limit", "25"))
    with pytest.raises(SystemExit, match="qcfs's permutation rows ran on 20 images; this run's would use 10: pass --permute-limit 20"):
        paper_scale.main(_args(data, tmp_path / "ps", "--sources", "qcfs", "--methods", "IF + permute per-neuron", "--permute-limit", "10"))
    assert counted == [] and (tmp_path / "ps.json").read_text() == before
    # A selected permutation row on the table's images is redone; the subset-IF row follows it.
    paper_scale.main(_args(data, tmp_path / "ps", "--sources", "qcfs", "--methods", "IF + permute per-neuron", "--window-steps", "1,2,4"))
    runs = {r["label"]: r for r in json.loads((tmp_path / "ps.json").read_text())["sources"][0]["runs"]}
    assert runs["IF + permute per-neuron"]["T"] == [1, 2, 4] and runs["IF + permute per-layer"]["T"] == [1, 2]
    assert runs["IF (the 20 images of the permutation rows)"]["T"] == [1, 2, 4]


def test_a_source_with_no_selected_row_is_left_alone_and_the_paper_comparison_reads_the_if_row(tmp_path, counted):
    data = shared_data("cifar10")
    paper_scale.main(_args(data, tmp_path / "ps", "--sources", "qcfs,clipfloor", "--methods", "TPP"))  # no OUT.json before
    results = json.loads((tmp_path / "ps.json").read_text())
    assert [s["source"] for s in results["sources"]] == ["qcfs"] and [r["label"] for r in results["sources"][0]["runs"]] == ["TPP"]
    text = (tmp_path / "ps.md").read_text()
    assert "snnconv IF" not in text  # no IF row: TPP's numbers are not shown as IF's
    if_row = {"label": "IF", "T": [2], "accuracy": [0.5], "accuracy_std": [0.0], "latency_steps": [2], "samples": 30}
    results["sources"][0]["runs"].append(if_row)
    gap = 100 * (0.5 - results["sources"][0]["ann_accuracy"])
    assert f"| snnconv IF, CIFAR-10 (JPEG-q75) | {100 * results['sources'][0]['ann_accuracy']:.2f} | {gap:+.2f} |" in paper_scale.markdown(results)


def test_the_spikingjelly_row_is_selected_by_its_own_label():
    assert paper_scale.selected(paper_scale.SPIKINGJELLY_LABEL, ["SpikingJelly 2.0.0 (99.9%)"])
    assert paper_scale.SPIKINGJELLY_LABEL in paper_scale.source_labels("relu", 4, spikingjelly=True)
    assert paper_scale.SPIKINGJELLY_LABEL not in paper_scale.source_labels("relu", 4, spikingjelly=False)


def test_rows_of_other_weights_are_never_merged(tmp_path, counted):
    # a run resumed in place keeps its path and changes its weights: --methods must not put
    # rows of the new weights beside rows of the old ones (refused before any work)
    import shutil

    import torch

    from snnconv.checkpoint import load_checkpoint, save_checkpoint

    data = shared_data("cifar10")
    zoo = tmp_path / "zoo"
    shutil.copytree(paper_scale.ZOO / paper_scale.SOURCES["qcfs"], zoo / "mine")
    base = _args(data, tmp_path / "ps", "--zoo", str(zoo), "--source", "qcfs=mine", "--sources", "qcfs", "--steps", "1")
    paper_scale.main(base)
    record = json.loads((tmp_path / "ps.json").read_text())["sources"][0]
    assert record["checkpoint"] == "zoo/mine/checkpoint.safetensors" and len(record["checkpoint_sha256"]) == 64
    before, counted[:] = (tmp_path / "ps.json").read_text(), []
    path = zoo / "mine" / "checkpoint.safetensors"
    model, meta = load_checkpoint(path)
    with torch.no_grad():
        next(model.parameters()).mul_(1.01)
    save_checkpoint(path, model, meta)
    with pytest.raises(SystemExit, match=r"--methods adds rows to qcfs's table, whose rows ran on zoo/mine/checkpoint.safetensors "
                                         r"\(sha256 [0-9a-f]{12}\); this run's checkpoint is .* pass another --out"):
        paper_scale.main([*base, "--methods", "TPP"])
    shutil.copytree(zoo / "mine", zoo / "other")
    with pytest.raises(SystemExit, match="whose rows ran on zoo/mine/checkpoint.safetensors"):
        paper_scale.main([*base, "--source", "qcfs=other", "--methods", "TPP"])
    assert counted == [] and (tmp_path / "ps.json").read_text() == before
    with pytest.raises(SystemExit, match="--source takes KIND=ZOO_FOLDER with KIND one of qcfs, relu, clipfloor, got 'vgg=x'"):
        paper_scale.main([*base, "--source", "vgg=x"])


def test_an_interrupted_table_resumes_at_the_row_it_was_on(tmp_path, monkeypatch):
    data = shared_data("cifar10")
    calls, real, interrupted = [], paper_scale.run_method, []

    def flaky(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 3 and not interrupted:
            interrupted.append(True)
            raise InterruptedError("the session ends during the third row")
        return real(*args, **kwargs)

    monkeypatch.setattr(paper_scale, "run_method", flaky)
    base = _args(data, tmp_path / "ps", "--sources", "qcfs", "--steps", "1", "--resume")
    with pytest.raises(InterruptedError):
        paper_scale.main(base)
    saved = json.loads((tmp_path / "ps.json").read_text())["sources"][0]["runs"]
    assert [r["label"] for r in saved] == ["IF", "GN tau=2"]
    calls[:] = [None] * 3  # past the interruption
    paper_scale.main(base)
    labels = [r["label"] for r in json.loads((tmp_path / "ps.json").read_text())["sources"][0]["runs"]]
    assert len(calls) == 3 + 4 + 1  # the 4 rows left, then IF on the permutation rows' images
    assert labels[:6] == ["IF", "GN tau=2", "GN tau=L=4", "IF + permute per-neuron", "IF + permute per-layer", "TPP"]
    runs = json.loads((tmp_path / "ps.json").read_text())["sources"][0]["runs"]
    assert runs[0] == saved[0] and runs[1] == saved[1]  # kept, not rerun
    calls[:] = []
    paper_scale.main([*base, "--seeds", "0,1"])  # other seeds: the stochastic rows are redone, the others kept
    assert [(spec.neuron, spec.permute, spec.seeds) for spec in calls] == [  # one seed at a time (saved after each)
        ("if", "per-neuron", [0]), ("if", "per-neuron", [1]), ("if", "per-layer", [0]), ("if", "per-layer", [1]),
        ("tpp", None, [0]), ("tpp", None, [1]), ("if", None, [0])]


def test_an_interrupted_row_of_random_draws_resumes_at_the_seed_it_was_on(tmp_path, monkeypatch):
    data = shared_data("cifar10")
    calls, real = [], paper_scale.run_method

    def flaky(*args, **kwargs):
        calls.append(args[3].seeds)
        if len(calls) == 2:
            raise InterruptedError("the session ends during the second seed")
        return real(*args, **kwargs)

    monkeypatch.setattr(paper_scale, "run_method", flaky)
    base = _args(data, tmp_path / "ps", "--sources", "qcfs", "--methods", "TPP", "--seeds", "0,1,2", "--resume")
    with pytest.raises(InterruptedError):
        paper_scale.main(base)
    saved = json.loads((tmp_path / "ps.json").read_text())["sources"][0]
    assert saved["runs"] == [] and [r["seeds"] for r in saved["unfinished"]["TPP"]] == [[0]]
    paper_scale.main(base)
    assert calls == [[0], [1], [1], [2]]  # seed 0 kept, seed 1 redone
    resumed = json.loads((tmp_path / "ps.json").read_text())["sources"][0]
    assert "unfinished" not in resumed
    monkeypatch.setattr(paper_scale, "run_method", real)
    paper_scale.main(_args(data, tmp_path / "whole", "--sources", "qcfs", "--methods", "TPP", "--seeds", "0,1,2"))
    (whole,) = json.loads((tmp_path / "whole.json").read_text())["sources"][0]["runs"]
    (row,) = resumed["runs"]
    assert row["seeds"] == [0, 1, 2] and len(set(map(tuple, row["accuracy_per_seed"]))) == 3
    assert {k: v for k, v in row.items() if k not in ("wall_seconds", "command")} == \
        {k: v for k, v in whole.items() if k not in ("wall_seconds", "command")}

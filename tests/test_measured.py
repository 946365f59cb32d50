"""Say what was measured: the demo's README table, test-image counts, resolved GN tau,
the CIF-on-the-wrong-source note, the latency brackets and train's --help defaults."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from snnconv.cli import build_parser, main
from snnconv.experiments import LATENCY_HEADER, format_table, source_note
from snnconv.report import method_label

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_demo_table(torch_version: str, capability: str) -> tuple[int, list[int], list[float] | None]:
    """(test images, T values, [ANN, T=1.. accuracies] of the row for ``torch_version`` on a
    CPU of vector ``capability`` (``torch.backends.cpu.get_cpu_capability()``: AVX2, AVX512, ...)
    or None when the README has no row for them) from the README's `snnconv demo` table."""
    text = README.read_text()
    start = text.index("Measured with `snnconv demo`")
    images = int(re.search(r"test split of (\d+) images", text[start:]).group(1))
    table = []
    for line in text[start:].splitlines():
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif table:
            break
    header, rows = table[0], table[2:]
    assert header[1] == "ANN" and rows, table
    steps = [int(h.removeprefix("T=")) for h in header[2:]]
    numbers = {row[0].removeprefix("IF, torch "): [float(c) for c in row[1:]] for row in rows}
    return images, steps, numbers.get(f"{torch_version}, {capability}")


def test_the_demo_prints_the_readme_table():
    """Runs the whole demo (30 epochs on digits, as `snnconv demo` does) and compares every
    number with the README's row for the installed torch: the README must show what the demo
    prints today. The CPU's vector instruction set picks other kernels (AVX2 against AVX-512),
    which round differently, so a row names the torch release and the capability."""
    import torch

    from snnconv.demo import DEMO_STEPS, run_demo

    version = torch.__version__.split("+")[0]
    capability = torch.backends.cpu.get_cpu_capability()
    images, steps, numbers = readme_demo_table(version, capability)
    if numbers is None:
        pytest.skip(f"README.md's demo table has no row for torch {version} on {capability}: run `snnconv demo` and add one")
    printed = []
    results = run_demo(log=printed.append)
    run = results["runs"][0]
    assert images == results["samples"] == 450
    assert steps == run["T"] == DEMO_STEPS
    measured = [round(100 * results["ann_accuracy"], 2)] + [round(100 * a, 2) for a in run["accuracy"]]
    assert measured == numbers, (f"README says {numbers} for torch {version} on {capability}, the demo prints {measured}: "
                                 "update README.md")
    assert f"ANN accuracy {numbers[0]:.2f}%" in printed[0]


def test_the_readme_demo_table_parses():
    for capability in ("AVX2", "AVX512"):
        images, steps, numbers = readme_demo_table("2.13.0", capability)
        assert images == 450 and steps == [1, 2, 4, 8, 16, 32] and len(numbers) == 7
    assert readme_demo_table("2.13.0", "AVX2") != readme_demo_table("2.13.0", "AVX512")
    assert readme_demo_table("0.0.0", "AVX2")[2] is None and readme_demo_table("2.13.0", "NO AVX")[2] is None


def test_evaluate_prints_its_test_image_count(digits_source, tmp_path, capsys):
    checkpoint = str(digits_source[4])
    assert main(["evaluate", checkpoint, "-T", "2", "--limit", "37", "--no-progress", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "(37 test images)" in out
    assert json.loads((tmp_path / "r.json").read_text())["samples"] == 37


def test_gn_auto_shows_the_resolved_tau(digits_source, tmp_path, capsys):
    """L = 4, target T = 2: tau = ceil(4 / 2) = 2, printed and stored instead of 'auto'."""
    checkpoint = str(digits_source[4])
    path = tmp_path / "r.json"
    assert main(["evaluate", checkpoint, "--neuron", "gn", "--group-size", "auto", "--target-steps", "2", "-T", "1,2",
                 "--limit", "40", "--no-progress", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    run = json.loads(path.read_text())["runs"][0]
    assert run["group_size"] == 2 and run["options"]["group_size"] == "auto"
    assert "gn (group_size=2 (auto), target_steps=2)" in out
    assert method_label(run) == "gn (group_size=2 (auto), target_steps=2)"  # compare's label too
    assert main(["evaluate", checkpoint, "--neuron", "gn", "--group-size", "3", "-T", "1", "--limit", "10",
                 "--no-progress", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["runs"][0]["group_size"] == 3
    assert "gn (group_size=3)" in capsys.readouterr().out


def test_evaluate_cif_on_a_qcfs_source_carries_compares_note(digits_source, tmp_path, capsys):
    checkpoint = str(digits_source[4])
    path = tmp_path / "r.json"
    assert main(["evaluate", checkpoint, "--neuron", "cif", "-T", "4", "--limit", "40", "--no-progress", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    note = source_note("cif", "qcfs")
    assert note is not None and "clip-floor" in note
    assert json.loads(path.read_text())["runs"][0]["note"] == note
    assert f"Note (cif): {note}" in out
    assert source_note("cif", "clipfloor") is None and source_note("if", "qcfs") is None
    assert "relu" in source_note("cif", "relu")
    assert main(["evaluate", checkpoint, "-T", "4", "--limit", "10", "--no-progress", "--json", str(path)]) == 0
    assert "note" not in json.loads(path.read_text())["runs"][0] and "Note" not in capsys.readouterr().out


def test_latency_brackets_are_explained_in_the_header():
    """TPP on a 2-spiking-layer network: latency (2 + 1) T, in brackets, named in the header."""
    run = {"neuron": "tpp", "options": {}, "T": [1, 2], "accuracy": [0.5, 0.75], "accuracy_std": [0.0, 0.0],
           "latency_steps": [3, 6]}
    table = format_table({"dataset": "digits", "model": "small_cnn", "ann_accuracy": 0.9, "samples": 8, "runs": [run]})
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert header == f"| {LATENCY_HEADER} | T=1 | T=2 |" and "[n]: latency" in header
    assert "| tpp | 50.00 [3] | 75.00 [6] |" in lines
    causal = dict(run, neuron="if", latency_steps=[1, 2])
    table = format_table({"dataset": "digits", "model": "small_cnn", "ann_accuracy": 0.9, "samples": 8, "runs": [causal]})
    assert "| method | T=1 | T=2 |" in table.splitlines() and "[" not in table


def test_train_help_shows_every_default_and_meaning():
    import argparse

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    assert train.formatter_class is argparse.ArgumentDefaultsHelpFormatter
    formatter = train._get_formatter()
    for action in train._actions:
        if action.dest in ("help", "debug"):
            continue
        assert action.help, f"train {action.option_strings[0]} has no help"
        assert "%(default)" in formatter._get_help_string(action), f"train {action.option_strings[0]} hides its default"
    text = " ".join(train.format_help().split())
    for shown in ("(default: 10)", "(default: 0.05)", "(default: 85.0)", "(default: small_cnn)", "(default: True)"):
        assert shown in text

"""Markdown table of bench/run_snnc.sh's results: one row per calibration and method.

Usage: python3 bench/snnc_table.py bench/results/NAME  (prints the table)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = [("none_999", "none (theta = 99.9th percentile)"), ("none_max", "none (theta = max)"),
        ("none_mse", "none (theta = MSE search)"), ("light", "light (MSE + bias calibration)"),
        ("advanced", "advanced (MSE + weight + potential calibration)")]
VARIANTS = [("if", "IF"), ("tpp", "TPP"), ("permute", "IF + permute per-neuron")]


def seconds(run: dict) -> str:
    """Total calibration seconds over all T (SNNC passes only), or '-'."""
    per_t = (run.get("calibration") or {}).get("per_T") or {}
    total = sum(sum(r.get("seconds", {}).values()) for r in per_t.values())
    return f"{total:.0f}" if total else "-"


def main(folder: str) -> None:
    root = Path(folder)
    lines, first = [], None
    for variant, variant_label in VARIANTS:
        for tag, label in ROWS:
            path = root / f"{tag}_{variant}.json"
            if not path.exists():
                continue
            result = json.loads(path.read_text())
            run = result["runs"][0]
            if first is None:
                first = result
                steps = run["T"]
                lines += ["| calibration | method | latency | " + " | ".join(f"T={t}" for t in steps) + " | SNNC seconds (all T) |",
                          "|---|---|---|" + "---|" * len(steps) + "---|"]
            cells = [f"{100 * a:.2f}" + (f" ± {100 * s:.2f}" if s else "") for a, s in zip(run["accuracy"], run["accuracy_std"])]
            latency = "T" if run["latency_steps"][0] == run["T"][0] else f"{run['latency_steps'][0] // run['T'][0]}·T"
            lines.append(f"| {label} | {variant_label} | {latency} | " + " | ".join(cells) + f" | {seconds(run)} |")
    head = [f"{first['dataset']} / {first['model']} / ReLU: ANN {100 * first['ann_accuracy']:.2f}% on {first['samples']} test images; "
            f"calibration on the first {first['runs'][0]['calibration']['images']} training images; "
            "± is the spread over seeds (TPP draws, permutations).", ""]
    commands = [(root / f"{tag}_{variant}.command").read_text().strip() for variant, _ in VARIANTS for tag, _ in ROWS
                if (root / f"{tag}_{variant}.json").exists() and (root / f"{tag}_{variant}.command").exists()]  # runs that finished
    print("\n".join(head + lines + ["", "Commands (CHECKPOINT and DATA as given to bench/run_snnc.sh):", "", "```"] + commands + ["```"]))


if __name__ == "__main__":
    main(sys.argv[1])

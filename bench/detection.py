"""Benchmark: convert a YOLO-style detector trained on MNIST-detection and measure SNN mAP
against latency for IF, GN, TPP (QCFS source) and CIF + wake-sleep (clip-floor source).

    python bench/detection.py --data-dir /path/to/MNIST --out bench/results/detection

Trains (or resumes) two L = 4 sources, one QCFS and one clip-floor, evaluates them on the
MNIST-detection test canvases and writes ``detection.json`` (the results schema of
:mod:`snnconv.detection.evaluate`, one entry per source) and ``detection.md`` (a table).
Everything is seeded; a second run reuses the trained checkpoints.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from snnconv.detection.evaluate import evaluate_detector
from snnconv.detection.train import DetectTrainConfig, train_detector
from snnconv.experiments import RunSpec
from snnconv.files import write_json, write_text

LEVELS = 4
NAMES = {"group_size": "tau", "initial_potential": "v(0)/theta"}


def _specs(source: str, gn_steps: list[int], if_steps: list[int], cif_sleep: int) -> list[RunSpec]:
    if source == "clipfloor":
        return [RunSpec("cif", [LEVELS], sleep_steps=cif_sleep)]
    return [
        RunSpec("if", if_steps),
        RunSpec("gn", gn_steps, options={"group_size": LEVELS}),
        RunSpec("tpp", gn_steps, seeds=[0]),
        # v(0) is open for TPP (methods.md section 4): measure the alternative too.
        RunSpec("tpp", gn_steps, seeds=[0], options={"initial_potential": 0.0}),
    ]


def _rows(results: dict, source: str, cif_report: set[int]) -> list[str]:
    rows = []
    for run in results["runs"]:
        label = run["neuron"].upper() + "".join(f" ({NAMES[k]}={v})" for k, v in run["options"].items())
        if run.get("sleep_steps"):
            label = f"CIF + WSC (T={run['wake_steps']}, S={run['sleep_steps']})"
        for i, (t, lat, m50, m) in enumerate(zip(run["T"], run["latency_steps"], run["map50"], run["map"])):
            if run.get("sleep_steps") and lat not in cif_report:
                continue
            step = f"{t} wake + {lat - t} sleep" if run.get("sleep_steps") and lat > t else str(lat if run.get("sleep_steps") else t)
            rows.append(f"| {label} | {source} | {step} | {lat} | {100 * m50:.2f} | {100 * m:.2f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST idx .gz files (or its raw/)")
    parser.add_argument("--out", default="bench/results/detection")
    parser.add_argument("--train-count", type=int, default=4000, help="training canvases")
    parser.add_argument("--test-count", type=int, default=300, help="test canvases")
    parser.add_argument("--size", type=int, default=64, help="canvas side (pixels)")
    parser.add_argument("--width", type=int, default=8, help="detector stem width")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sleep-steps", type=int, default=12, help="CIF sleep steps after T = L = 4 wake steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = Path(args.out)
    started = time.time()
    dataset_args = {"size": args.size, "train_count": args.train_count, "test_count": args.test_count}
    results, timings = {}, {}
    for source in ("qcfs", "clipfloor"):
        t0 = time.time()
        already = (out / source / "checkpoint.safetensors").exists()
        config = DetectTrainConfig(dataset="mnist_detection", dataset_args=dataset_args,
                                   activation=source, levels=LEVELS, width=args.width, epochs=args.epochs, seed=args.seed)
        train_detector(config, out / source, args.data_dir, progress=False, log=lambda m, s=source: print(f"[{s}] {m}", flush=True))
        timings[f"train_{source}_s"] = round(time.time() - t0, 1)
        timings[f"train_{source}_resumed_from_checkpoint"] = already
        t0 = time.time()
        specs = _specs(source, [1, 2, 4, 8], [1, 2, 4, 8, 16, 32], args.sleep_steps)
        results[source] = evaluate_detector(out / source / "checkpoint.safetensors", specs, args.data_dir, progress=False)
        timings[f"evaluate_{source}_s"] = round(time.time() - t0, 1)
        print(f"[{source}] ANN mAP@0.5 {results[source]['ann_map50']:.4f}", flush=True)
    timings["total_s"] = round(time.time() - started, 1)
    command = "python bench/detection.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "benchmark": "mnist_detection",
        "command": command,
        "levels": LEVELS,
        "sources": results,
        "timings": timings,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()},
    }
    write_json(out / "detection.json", report)
    cif_report = {1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 4 + args.sleep_steps}
    lines = [
        f"MNIST-detection ({args.size}x{args.size} canvases, 1-3 digits, {args.test_count} test images), "
        f"yolo_detector (vgg, width {args.width}), L = {LEVELS}.",
        "",
        f"ANN mAP@0.5: QCFS source {100 * results['qcfs']['ann_map50']:.2f} "
        f"(mAP@[.5:.95] {100 * results['qcfs']['ann_map']:.2f}); clip-floor source {100 * results['clipfloor']['ann_map50']:.2f} "
        f"(mAP@[.5:.95] {100 * results['clipfloor']['ann_map']:.2f}).",
        "",
        "| method | source | T (steps) | latency steps | SNN mAP@0.5 | SNN mAP@[.5:.95] |",
        "|---|---|---|---|---|---|",
        *_rows(results["qcfs"], "QCFS", cif_report),
        *_rows(results["clipfloor"], "clip-floor", cif_report),
        "",
        f"Wall time {timings['total_s']:.0f} s (training {timings['train_qcfs_s'] + timings['train_clipfloor_s']:.0f} s"
        + (" (checkpoints found and reused)" if timings["train_qcfs_resumed_from_checkpoint"] else "")
        + f", evaluation {timings['evaluate_qcfs_s'] + timings['evaluate_clipfloor_s']:.0f} s). Command: `{command}`",
    ]
    write_text(out / "detection.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

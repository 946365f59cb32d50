"""Why IF's gap to its ANN at small T depends on the source: flips against the ANN's margin.

For each source (a checkpoint or zoo name): the ANN's logits on the test images, then IF
(v(0) = θ/2) simulated once to the largest T. For every T: the share of images whose IF
prediction differs from the ANN's ("flips"), overall and by the ANN's decision margin
(top-1 minus top-2 logit, divided by the source's median top-1 logit so that sources of
different logit scale compare), in bins. A source whose images sit at larger relative
margins flips fewer of them at the same T, so its gap to the ANN is smaller.

    python bench/if_gap.py --sources zoo/resnet20_qcfs4_cifar10jpeg/checkpoint.safetensors \
        --data-dir ../shared/data/cifar10 --out bench/results/if_gap

Writes OUT.json and OUT.md. Numbers on CIFAR-10 are "CIFAR-10 (JPEG-q75)".
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snnconv import convert, running_average, simulate  # noqa: E402
from snnconv.experiments import load_evaluation  # noqa: E402
from snnconv.files import write_json, write_text  # noqa: E402

BINS = [0.0, 0.05, 0.1, 0.2, 0.4, float("inf")]


@torch.no_grad()
def source_gap(checkpoint: str, data_dir: str | None, limit: int | None, steps: list[int], batch_size: int) -> dict:
    """Flip rates of IF against the ANN of one source, overall and by relative margin bin."""
    model, meta, x, y, calibration = load_evaluation(checkpoint, data_dir, limit, torch.device("cpu"))
    model.eval()
    logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(y), batch_size)])
    top2 = logits.topk(2, dim=1).values
    scale = top2[:, 0].median()
    margin = (top2[:, 0] - top2[:, 1]) / scale
    ann_pred = logits.argmax(1)
    snn = convert(model, "if", calibration=calibration)
    preds = []
    for i in range(0, len(y), batch_size):
        average = running_average(simulate(snn, x[i : i + batch_size], max(steps)))
        preds.append(average[[t - 1 for t in steps]].argmax(2))
    preds = torch.cat(preds, dim=1)  # [len(steps), N]
    bins = torch.bucketize(margin, torch.tensor(BINS[1:-1]), right=True)
    record = {"checkpoint": checkpoint, "epochs": meta.get("epochs"), "samples": len(y),
              "ann_accuracy": (ann_pred == y).float().mean().item(), "median_top1_logit": scale.item(),
              "margin_quantiles": {q: margin.quantile(q).item() for q in (0.1, 0.25, 0.5)},
              "bins": [f"[{lo:g}, {hi:g})" for lo, hi in zip(BINS, BINS[1:])],
              "bin_share": [(bins == b).float().mean().item() for b in range(len(BINS) - 1)], "T": steps,
              "if_accuracy": [], "flip_rate": [], "flip_rate_by_bin": []}
    for k in range(len(steps)):
        flips = preds[k] != ann_pred
        record["if_accuracy"].append((preds[k] == y).float().mean().item())
        record["flip_rate"].append(flips.float().mean().item())
        record["flip_rate_by_bin"].append([flips[bins == b].float().mean().item() if (bins == b).any() else None
                                           for b in range(len(BINS) - 1)])
    return record


def markdown(results: dict) -> str:
    """Per source: share of images per margin bin, then IF's flip rate per T and bin."""
    lines = []
    for s in results["sources"]:
        lines += [f"### `{s['checkpoint']}` ({s['samples']} test images; ANN {100 * s['ann_accuracy']:.2f}%)", "",
                  "relative margin (top-1 - top-2 logit) / median top-1 logit: 10th / 25th / 50th percentile "
                  + " / ".join(f"{v:.3f}" for v in s["margin_quantiles"].values()), "",
                  "| T | IF accuracy | flips (all) | " + " | ".join(f"flips, margin {b}" for b in s["bins"]) + " |",
                  "|---" * (len(s["bins"]) + 3) + "|",
                  "| share of images | | | " + " | ".join(f"{100 * v:.1f}%" for v in s["bin_share"]) + " |"]
        for t, acc, flip, by_bin in zip(s["T"], s["if_accuracy"], s["flip_rate"], s["flip_rate_by_bin"]):
            cells = ["" if v is None else f"{100 * v:.1f}" for v in by_bin]
            lines.append(f"| {t} | {100 * acc:.2f} | {100 * flip:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", required=True, help="comma-separated checkpoints or zoo names")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int)
    p.add_argument("--steps", default="1,2,4,8,16")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", required=True, type=Path, help="output path without extension")
    args = p.parse_args(argv)
    steps = [int(t) for t in args.steps.split(",")]
    results = {"sources": [source_gap(c, args.data_dir, args.limit, steps, args.batch_size) for c in args.sources.split(",")],
               "torch": torch.__version__, "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}
    write_json(args.out.with_suffix(".json"), results)
    write_text(args.out.with_suffix(".md"), markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

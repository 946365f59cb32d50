"""Training throughput: the ``snnconv train`` step against a bare PyTorch loop, per precision.

For each variant (fp32, bf16 autocast, each with and without channels-last) one model is
built and trained by two loops that alternate in blocks of ``--block`` steps, so both see
the same machine load:

- **snnconv**: the step ``snnconv train`` runs (``train.augment_batch`` + ``train.train_step``:
  batched random crop and flip, cosine learning rate, autocast, cross-entropy, backward,
  SGD with Nesterov momentum and the parameter groups of the recipe);
- **bare**: a plain loop on the same model, batch, precision and memory format (index a
  batch, forward under autocast, cross-entropy, backward, ``optimizer.step()``), no
  augmentation.

Warm-up rule: on this CPU the first steps of a new model take seconds while oneDNN builds
its kernels, so each loop runs blocks untimed until the median step time of a block is
within 10% of the previous block's (at least 2 blocks, at most ``--max-warmup`` steps).
Then ``--rounds`` timed blocks of each; the record holds median ms/step and images/s of
each loop and their ratio (snnconv / bare) per variant, and bf16 speed-ups over fp32.

    python bench/train_throughput.py --data-dir ../shared/data/cifar10 --json bench/results/train_throughput.json

Numbers measured on cifar10_jpeg are "CIFAR-10 (JPEG-q75)" (throughput does not depend on
the pixels, but the label keeps the record honest).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from snnconv.data import load_dataset  # noqa: E402
from snnconv.files import write_json  # noqa: E402
from snnconv.train import TrainConfig, _param_groups, augment_batch, build_model, check_amp, cpu_has_bf16, resolve_device, train_step  # noqa: E402

LABELS = {"cifar10_jpeg": "CIFAR-10 (JPEG-q75)"}
VARIANTS = {"fp32": (False, False), "fp32+channels-last": (False, True), "bf16": (True, False), "bf16+channels-last": (True, True)}


def _loops(args, data, device, amp: bool, channels_last: bool):
    """(snnconv step, bare step) closures over one model each, built from the same seed."""
    config = TrainConfig(model=args.model, dataset=args.dataset, batch_size=args.batch_size, lr=0.1, amp=amp,
                         channels_last=channels_last, activation=args.activation)
    x_all, y_all = data.normalized(device=device), data.labels.to(device)
    padding, batches = max(1, x_all.shape[-1] // 8), len(y_all) // args.batch_size
    order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0)).to(device)
    generator = torch.Generator().manual_seed(1)
    loops = []
    for kind in ("snnconv", "bare"):
        torch.manual_seed(0)
        model, _ = build_model(config, data)
        model.to(device).train()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(_param_groups(model, config), lr=config.lr, momentum=0.9, nesterov=True)
        state = {"b": 0}

        def ours(model=model, optimizer=optimizer, state=state) -> None:
            b = state["b"] = state["b"] + 1
            for group in optimizer.param_groups:  # the recipe's cosine schedule, as in train()
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * b / 10_000))
            index = order[(b % batches) * args.batch_size : (b % batches + 1) * args.batch_size]
            x = augment_batch(x_all[index], padding, data.flip, generator, channels_last)
            train_step(model, optimizer, x, y_all[index], config)

        def bare(model=model, optimizer=optimizer, state=state) -> None:
            b = state["b"] = state["b"] + 1
            index = order[(b % batches) * args.batch_size : (b % batches + 1) * args.batch_size]
            x = x_all[index]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), y_all[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        loops.append(ours if kind == "snnconv" else bare)
    return loops


def _block(step, steps: int, device) -> list[float]:
    """Per-step wall times (s) of ``steps`` calls, synchronising the device after each."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _warm_up(step, args, device) -> int:
    """Untimed blocks until a block's median is within 10% of the previous one's; returns the steps run."""
    previous, done = None, 0
    while done < args.max_warmup:
        median = statistics.median(_block(step, args.block, device))
        done += args.block
        if previous is not None and abs(median - previous) <= 0.1 * previous:
            break
        previous = median
    return done


def _cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(args: argparse.Namespace) -> dict:
    """Run every variant (alternating blocks of the two loops) and return the record."""
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, "train", args.data_dir)
    data.images, data.labels = data.images[: args.images], data.labels[: args.images]
    rows = []
    for name in args.variants.split(","):
        amp, channels_last = VARIANTS[name]
        if amp:
            check_amp(device)
        ours, bare = _loops(args, data, device, amp, channels_last)
        warm = [_warm_up(ours, args, device), _warm_up(bare, args, device)]
        times = {"snnconv": [], "bare": []}
        for _ in range(args.rounds):
            times["snnconv"] += _block(ours, args.block, device)
            times["bare"] += _block(bare, args.block, device)
        row = {"variant": name, "amp": amp, "channels_last": channels_last, "warmup_steps": warm}
        for kind, values in times.items():
            median = statistics.median(values)
            row[kind] = {"ms_per_step": 1000 * median, "images_per_s": args.batch_size / median,
                         "iqr_ms": 1000 * (statistics.quantiles(values, n=4)[2] - statistics.quantiles(values, n=4)[0])}
        row["ratio"] = row["snnconv"]["images_per_s"] / row["bare"]["images_per_s"]
        rows.append(row)
        print(f"{name}: snnconv {row['snnconv']['images_per_s']:.0f} images/s, bare {row['bare']['images_per_s']:.0f} "
              f"images/s, ratio {row['ratio']:.2f} (warm-up {warm} steps)", flush=True)
    fp32 = next((r for r in rows if r["variant"] == "fp32"), None)
    for row in rows:
        row["speedup_vs_fp32"] = None if fp32 is None else row["snnconv"]["images_per_s"] / fp32["snnconv"]["images_per_s"]
    return {
        "dataset": args.dataset, "dataset_label": LABELS.get(args.dataset, args.dataset), "model": args.model,
        "activation": args.activation, "batch_size": args.batch_size, "block": args.block, "rounds": args.rounds,
        "warmup_rule": "blocks until a block's median step is within 10% of the previous block's", "rows": rows,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        # the CPU's vector units decide the fp32 speed and whether bf16 runs natively (`--amp`)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_bf16": cpu_has_bf16(),
        "cpu_threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0], "torch": torch.__version__,
    }


def table(record: dict) -> str:
    """Markdown table of a record."""
    lines = [f"{record['dataset_label']} / {record['model']} ({record['activation']}), batch {record['batch_size']}, "
             f"{record['device']} {record.get('device_name', '')} ({record['cpu_threads']} threads), medians of {record['rounds'] * record['block']} steps",
             "", "| variant | snnconv images/s | bare loop images/s | snnconv / bare | x fp32 |", "|---|---|---|---|---|"]
    for r in record["rows"]:
        speedup = "" if r["speedup_vs_fp32"] is None else f"{r['speedup_vs_fp32']:.2f}"
        lines.append(f"| {r['variant']} | {r['snnconv']['images_per_s']:.0f} | {r['bare']['images_per_s']:.0f} | {r['ratio']:.2f} | {speedup} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10_jpeg")
    parser.add_argument("--data-dir", help="folder with the dataset files")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--activation", default="qcfs", choices=["qcfs", "clipfloor", "relu"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=10_000, help="training images held (enough for distinct batches)")
    parser.add_argument("--block", type=int, default=5, help="steps per block")
    parser.add_argument("--rounds", type=int, default=6, help="timed blocks per loop")
    parser.add_argument("--max-warmup", type=int, default=60, help="at most this many untimed steps per loop")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the record here")
    args = parser.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    record = measure(args)
    print(table(record))
    if args.json:
        write_json(args.json, record)
        Path(args.json).with_suffix(".md").write_text(table(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

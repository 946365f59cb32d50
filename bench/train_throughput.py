"""Training throughput (images/s) of the snnconv training step, after warm-up.

The timed step is the one ``snnconv train`` runs: batched random crop (+ flip), optional
channels-last and bf16 autocast, forward, cross-entropy, backward, SGD with Nesterov
momentum, on data already held on the device. Data loading is timed separately.

    python bench/train_throughput.py --data-dir ../shared/data/cifar10 --json bench/throughput_cpu.json

Numbers measured on cifar10_jpeg are "CIFAR-10 (JPEG-q75)" (throughput does not depend
on the pixels, but the label keeps the record honest).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from snnconv.augment import random_crop, random_flip  # noqa: E402
from snnconv.data import load_dataset  # noqa: E402
from snnconv.files import write_json  # noqa: E402
from snnconv.train import TrainConfig, _param_groups, build_model, resolve_device  # noqa: E402

LABELS = {"cifar10_jpeg": "CIFAR-10 (JPEG-q75)"}


def measure(args: argparse.Namespace) -> dict:
    """Load the dataset, run ``args.warmup`` untimed and ``args.steps`` timed training steps; return the record."""
    device = resolve_device(args.device)
    if args.amp and device.type != "cuda":
        raise SystemExit("--amp (bf16 autocast) needs CUDA: drop it on CPU")
    start = time.perf_counter()
    data = load_dataset(args.dataset, "train", args.data_dir)
    load_s = time.perf_counter() - start
    config = TrainConfig(model=args.model, dataset=args.dataset, batch_size=args.batch_size, device=args.device,
                         amp=args.amp, channels_last=args.channels_last)
    torch.manual_seed(0)
    model, _ = build_model(config, data)
    model.to(device).train()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(_param_groups(model, config), lr=config.lr, momentum=config.momentum, nesterov=True)
    x_all = data.normalized(device=device)
    y_all = data.labels.to(device)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y_all), generator=generator).to(device)
    padding = max(1, x_all.shape[-1] // 8)
    batches = math.ceil(len(y_all) / args.batch_size)

    def step(b: int) -> None:
        index = order[(b % batches) * args.batch_size : (b % batches + 1) * args.batch_size]
        x = random_crop(x_all[index], padding, generator)
        if data.flip:
            x = random_flip(x, generator)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = F.cross_entropy(model(x), y_all[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for b in range(args.warmup):
        step(b)
    sync()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start, cpu_start = time.perf_counter(), time.process_time()
    for b in range(args.warmup, args.warmup + args.steps):
        step(b)
    sync()
    elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    images = args.steps * min(args.batch_size, len(y_all))
    return {
        "dataset": args.dataset,
        "dataset_label": LABELS.get(args.dataset, args.dataset),
        "model": args.model,
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "seconds": elapsed,
        "images_per_s": images / elapsed,
        "ms_per_step": 1000 * elapsed / args.steps,
        # CPU seconds this process got: on a shared machine wall time also counts other jobs.
        "process_cpu_s": cpu_s,
        "images_per_cpu_s": images / cpu_s,
        "dataset_load_s": load_s,
        "train_images": len(y_all),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "load_average_1min": load_before,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10_jpeg")
    parser.add_argument("--data-dir", help="folder with the dataset files")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator, kernel selection)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", help="write the record here")
    args = parser.parse_args(argv)
    record = measure(args)
    print(f"| dataset | model | device | batch | amp | channels-last | ms/step | images/s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {record['dataset_label']} | {record['model']} | {record['device']} ({record['cpu_threads']} threads) | {record['batch_size']} "
          f"| {record['amp']} | {record['channels_last']} | {record['ms_per_step']:.0f} | {record['images_per_s']:.1f} |")
    print(f"dataset load {record['dataset_load_s']:.1f} s; process CPU time {record['process_cpu_s']:.1f} s "
          f"({record['images_per_cpu_s']:.1f} images per CPU-second); 1-min load average before timing: {record['load_average_1min']}")
    if args.json:
        write_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

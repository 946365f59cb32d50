"""Max pooling after spiking layers: the max-pool gate (convert(..., max_pool="gate"))
against the ANN, and against swapping the max pools for average pools.

A QCFS (L = 8) CNN with two 2x2 max pools after activations is trained on digits
(1347 train / 450 test images, 8x8, 30 epochs, seed 0, on one CPU
core: 12 s measured), then converted with IF and the gate. Printed: test accuracy per T, and the
relative MSE of the output's running average to the ANN's output.

    OMP_NUM_THREADS=1 python bench/max_pool_gate.py > bench/results/max_pool_gate.md
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from snnconv import QCFS, convert, running_average
from snnconv.activations import keep_thresholds_positive
from snnconv.data import load_dataset


def source() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), QCFS(8, 2.0), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), QCFS(8, 2.0), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )


def main() -> None:
    torch.manual_seed(0)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    x, y = train.normalized(), train.labels
    xt, yt = test.normalized(), test.labels
    model = source()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        model.train()
        for index in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
            keep_thresholds_positive(model)
    model.eval()
    with torch.no_grad():
        ann = model(xt)
    print(f"ANN test accuracy {float((ann.argmax(1) == yt).float().mean()):.4f}")
    swapped = nn.Sequential(*[nn.AvgPool2d(2) if isinstance(m, nn.MaxPool2d) else m for m in model])
    runs = {"gate": convert(model, "if", max_pool="gate"), "avg-pool swap": convert(swapped, "if")}
    print("| conversion | T | accuracy | relative MSE to the ANN output |")
    print("|---|---|---|---|")
    for name, snn in runs.items():
        for steps in (4, 8, 16, 32, 64):
            readout = running_average(snn(xt, steps))[-1]
            acc = float((readout.argmax(1) == yt).float().mean())
            rel = float(((readout - ann) ** 2).sum() / (ann ** 2).sum())
            print(f"| {name} | {steps} | {acc:.4f} | {rel:.4f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Train the source checkpoints every method benchmark uses (same source for all methods).
# Usage: bash bench/train_sources.sh SHARED_DATA_DIR [OUT_DIR]   (OUT_DIR defaults to runs/)
# Sequential on purpose: 2 CPU cores. Each command resumes if interrupted.
# Budgets are small because everything was trained on 2 CPU cores shared with other jobs;
# the benchmarks compare each SNN with its own source ANN, which is what conversion is about.
set -euo pipefail
data=${1:?give the shared data folder, e.g. ../shared/data}
out=${2:-runs}
train() { python3 -m snnconv train --no-progress "$@"; }
# scikit-learn's 8x8 digits: trained to convergence in a minute, the well-trained reference
train --model small_cnn --dataset digits --activation qcfs --levels 4 --epochs 30 --batch-size 64 --lr 0.05 --out "$out/digits_qcfs4"
train --model small_cnn --dataset digits --activation clipfloor --levels 4 --epochs 30 --batch-size 64 --lr 0.05 --out "$out/digits_clipfloor4"
train --model small_cnn --dataset digits --activation clipfloor --levels 8 --epochs 30 --batch-size 64 --lr 0.05 --out "$out/digits_clipfloor8"
train --model small_cnn --dataset mnist --data-dir "$data/MNIST" --activation qcfs --levels 4 --epochs 4 --out "$out/mnist_qcfs4"
train --model small_cnn --dataset mnist --data-dir "$data/MNIST" --activation clipfloor --levels 4 --epochs 2 --out "$out/mnist_clipfloor4"
train --model vgg6 --dataset cifar10_jpeg --data-dir "$data/cifar10" --activation qcfs --levels 4 --epochs 3 --train-limit 20000 --out "$out/cifar_qcfs4"
train --model small_cnn --dataset mnist --data-dir "$data/MNIST" --activation clipfloor --levels 8 --epochs 1 --out "$out/mnist_clipfloor8"
train --model vgg6 --dataset cifar10_jpeg --data-dir "$data/cifar10" --activation clipfloor --levels 4 --epochs 3 --train-limit 10000 --out "$out/cifar_clipfloor4"
train --model vgg6 --dataset cifar10_jpeg --data-dir "$data/cifar10" --activation clipfloor --levels 8 --epochs 3 --train-limit 10000 --out "$out/cifar_clipfloor8"

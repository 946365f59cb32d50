#!/usr/bin/env bash
# Every method benchmark quoted in the README, on the sources from bench/train_sources.sh.
# Usage: bash bench/run_methods.sh SHARED_DATA_DIR [RUNS_DIR] [mnist|cifar|all]
# Writes bench/results/<name>.json and .md. Sequential on purpose (2 CPU cores).
set -euo pipefail
data=${1:?give the shared data folder, e.g. ../shared/data}
runs=${2:-runs}
which=${3:-all}
bench() { python3 bench/methods.py "$@"; }
if [[ $which == mnist || $which == all ]]; then
  bench --preset gn --checkpoint "$runs/mnist_qcfs4/checkpoint.safetensors" --data-dir "$data/MNIST" --limit 2000 --out bench/results/mnist_gn
  bench --preset tpp --checkpoint "$runs/mnist_qcfs4/checkpoint.safetensors" --data-dir "$data/MNIST" --limit 1000 --seeds 0,1,2 --out bench/results/mnist_tpp
  bench --preset casc --checkpoint "$runs/mnist_clipfloor4/checkpoint.safetensors" --data-dir "$data/MNIST" --limit 2000 --sleep-steps 28 --out bench/results/mnist_casc_L4
  bench --preset casc --checkpoint "$runs/mnist_clipfloor8/checkpoint.safetensors" --data-dir "$data/MNIST" --limit 2000 --sleep-steps 24 --out bench/results/mnist_casc_L8
fi
if [[ $which == cifar || $which == all ]]; then
  bench --preset gn --checkpoint "$runs/cifar_qcfs4/checkpoint.safetensors" --data-dir "$data/cifar10" --limit 1000 --out bench/results/cifar_gn
  bench --preset tpp --checkpoint "$runs/cifar_qcfs4/checkpoint.safetensors" --data-dir "$data/cifar10" --limit 500 --seeds 0,1,2 --out bench/results/cifar_tpp
  bench --preset casc --checkpoint "$runs/cifar_clipfloor4/checkpoint.safetensors" --data-dir "$data/cifar10" --limit 1000 --sleep-steps 28 --out bench/results/cifar_casc_L4
  bench --preset casc --checkpoint "$runs/cifar_clipfloor8/checkpoint.safetensors" --data-dir "$data/cifar10" --limit 1000 --sleep-steps 24 --out bench/results/cifar_casc_L8
fi

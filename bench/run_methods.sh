#!/usr/bin/env bash
# Every method benchmark quoted in the README, on the sources from bench/train_sources.sh.
# Usage: bash bench/run_methods.sh SHARED_DATA_DIR [RUNS_DIR] [FILTER]
#   FILTER: a prefix of the result names below (mnist, cifar, mnist_tpp, ...); default all.
# Writes bench/results/<name>.json and .md. Sequential on purpose (2 CPU cores); the image
# limits keep each line within minutes there.
set -euo pipefail
data=${1:?give the shared data folder, e.g. ../shared/data}
runs=${2:-runs}
filter=${3:-}
#      result name     preset source checkpoint  data folder  test images  extra
jobs=(
  "digits_gn       gn   digits_qcfs4      -       450"
  "digits_tpp      tpp  digits_qcfs4      -       450   --seeds 0,1,2"
  "digits_casc_L4  casc digits_clipfloor4 -       450   --sleep-steps 28"
  "digits_casc_L8  casc digits_clipfloor8 -       450   --sleep-steps 24"
  "mnist_gn        gn   mnist_qcfs4       MNIST   2000"
  "mnist_tpp       tpp  mnist_qcfs4       MNIST   500   --seeds 0,1,2"
  "mnist_casc_L4   casc mnist_clipfloor4  MNIST   1000  --sleep-steps 28"
  "mnist_casc_L8   casc mnist_clipfloor8  MNIST   1000  --sleep-steps 24"
  "cifar_gn        gn   cifar_qcfs4       cifar10 500"
  "cifar_tpp       tpp  cifar_qcfs4       cifar10 200   --seeds 0,1,2"
  "cifar_casc_L4   casc cifar_clipfloor4  cifar10 500   --sleep-steps 28"
  "cifar_casc_L8   casc cifar_clipfloor8  cifar10 500   --sleep-steps 24"
)
for job in "${jobs[@]}"; do
  read -r name preset source folder limit extra <<<"$job"
  [[ $name == "$filter"* ]] || continue
  where=(--data-dir "$data/$folder")
  [[ $folder == - ]] && where=()  # digits: bundled with scikit-learn
  # shellcheck disable=SC2086  # extra holds whole options
  python3 bench/methods.py --preset "$preset" --checkpoint "$runs/$source/checkpoint.safetensors" \
    "${where[@]}" --limit "$limit" $extra --out "bench/results/$name"
done

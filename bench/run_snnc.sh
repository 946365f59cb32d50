#!/usr/bin/env bash
# SNN Calibration on a ReLU source: none / light / advanced at T = 4, 8, 16, 32, each with
# IF, TPP and IF + per-neuron permutation. Every line is a plain `snnconv evaluate`;
# bench/snnc_table.py then writes bench/results/<name>.md from the JSON files. Each run
# writes TAG.command and TAG.json, so rows can be added to a folder later, one at a time.
# Usage: bash bench/run_snnc.sh CHECKPOINT DATA_DIR NAME [TEST_IMAGES] [CALIBRATION_IMAGES] [VARIANTS] [ROWS]
#   VARIANTS: any of "if tpp permute" (default all); ROWS: any of
#   "none_999 none_max none_mse light advanced" (default all). Run variants in separate
#   processes to use more cores; then: python3 bench/snnc_table.py bench/results/NAME
set -euo pipefail
ckpt=${1:?give a ReLU checkpoint}
data=${2:?give its dataset folder}
name=${3:?give a result name, e.g. mnist_snnc}
limit=${4:-2000}
images=${5:-1024}
variants=${6:-if tpp permute}
rows=${7:-none_999 none_max none_mse light advanced}
out="bench/results/$name"
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run() {  # run TAG ARGS...: one evaluate, its JSON at $out/TAG.json
  local tag=$1; shift
  [[ " $rows " == *" ${tag%_*} "* ]] || return 0
  echo "snnconv evaluate CHECKPOINT --data-dir DATA -T 4,8,16,32 --limit $limit $*" >"$out/$tag.command"
  python3 -m snnconv evaluate "$ckpt" --data-dir "$data" -T 4,8,16,32 --limit "$limit" --no-progress \
    --json "$out/$tag.json" "$@" >/dev/null
}
for variant in $variants; do
  case $variant in
    if) method=(--neuron if) ;;
    tpp) method=(--neuron tpp) ;;
    permute) method=(--neuron if --permute per-neuron) ;;
  esac
  run "none_999_$variant" "${method[@]}" --calibrate 99.9 --calibration-images "$images"
  run "none_max_$variant" "${method[@]}" --calibrate max --calibration-images "$images"
  run "none_mse_$variant" "${method[@]}" --calibrate mse --calibration-images "$images"
  run "light_$variant" "${method[@]}" --calibrate mse --snn-calibration light --calibration-images "$images"
  run "advanced_$variant" "${method[@]}" --calibrate mse --snn-calibration advanced --calibration-images "$images"
done

#!/usr/bin/env bash
# SNN Calibration on a ReLU source: none / light / advanced at T = 4, 8, 16, 32, each with
# IF, TPP and IF + per-neuron permutation. Every line is a plain `snnconv evaluate`;
# bench/snnc_table.py then writes bench/results/<name>.md from the JSON files.
# Usage: bash bench/run_snnc.sh CHECKPOINT DATA_DIR NAME [TEST_IMAGES]
set -euo pipefail
ckpt=${1:?give a ReLU checkpoint}
data=${2:?give its dataset folder}
name=${3:?give a result name, e.g. mnist_snnc}
limit=${4:-2000}
out="bench/results/$name"
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run() {  # run TAG ARGS...: one evaluate, its JSON at $out/TAG.json
  local tag=$1; shift
  echo "snnconv evaluate $ckpt --data-dir $data -T 4,8,16,32 --limit $limit $*" >>"$out/commands.txt"
  python3 -m snnconv evaluate "$ckpt" --data-dir "$data" -T 4,8,16,32 --limit "$limit" --no-progress \
    --json "$out/$tag.json" "$@" >/dev/null
}
: >"$out/commands.txt"
for variant in if tpp permute; do
  case $variant in
    if) method=(--neuron if) ;;
    tpp) method=(--neuron tpp --seeds 0,1) ;;
    permute) method=(--neuron if --permute per-neuron --seeds 0,1) ;;
  esac
  run "none_999_$variant" "${method[@]}" --calibrate 99.9
  run "none_max_$variant" "${method[@]}" --calibrate max
  run "none_mse_$variant" "${method[@]}" --calibrate mse --calibration-images 1024
  run "light_$variant" "${method[@]}" --calibrate mse --snn-calibration light --calibration-images 1024
  run "advanced_$variant" "${method[@]}" --calibrate mse --snn-calibration advanced --calibration-images 1024
done
python3 bench/snnc_table.py "$out" >"bench/results/$name.md"

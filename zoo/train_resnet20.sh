#!/usr/bin/env bash
# Train (or resume) one model-zoo source: bash zoo/train_resnet20.sh ACTIVATION FOLDER DATA_DIR [TRAIN OPTIONS...]
# ACTIVATION: qcfs | clipfloor | relu. Resumes from FOLDER/checkpoint.safetensors if present.
# Further options go to `snnconv train` (e.g. --cutout 16 --autoaugment: the QCFS authors' CIFAR augmentation).
# EPOCHS (default 30): a larger value extends a finished run (the cosine restarts; see zoo/README.md).
set -euo pipefail
activation=$1 folder=$2 data_dir=$3
shift 3
mkdir -p "$folder"
# bf16 autocast only where the CPU computes bf16 natively (AVX512-BF16 / AMX): elsewhere it is slower than fp32
# and `snnconv train --amp` refuses it. Precision is a speed option: a run may resume with the other one.
amp=$(python -c 'from snnconv.train import cpu_has_bf16; print("--amp" if cpu_has_bf16() else "")')
snnconv train --model resnet20 --dataset cifar10_jpeg --data-dir "$data_dir" --activation "$activation" --levels 4 \
  --epochs "${EPOCHS:-30}" --batch-size 128 --lr 0.1 --weight-decay 5e-4 $amp --channels-last --no-progress --out "$folder" "$@" \
  2>&1 | tee -a "$folder/train.log"

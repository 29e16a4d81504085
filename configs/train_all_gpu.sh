#!/usr/bin/env bash
# Train, bundle and evaluate every shipped model from the GPU presets (configs/*.yaml), one after another.
#
#   configs/train_all_gpu.sh                    # one GPU
#   NPROC=4 configs/train_all_gpu.sh            # DDP over 4 GPUs of this machine (torchrun), same recipes
#   ONLY="polyp-seg skin-cls" configs/train_all_gpu.sh
#   EXTRA="--set epochs=1 steps_per_epoch=2" configs/train_all_gpu.sh   # a smoke run of the whole chain
#
# Run folders go to $RUNS (default runs/), bundles to $MODELS (default models-gpu/, so that the shipped CPU
# bundles in models/ are only replaced by hand, after comparing: medlens evaluate OLD --split test --split-of NEW).
# A run folder that already has a checkpoint is resumed, so the script can be restarted after an interruption.
# Needs `make weights` (offline ImageNet weights) and ../shared/datasets.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-runs}
MODELS=${MODELS:-models-gpu}
EVAL=${EVAL:-eval-gpu}
NPROC=${NPROC:-1}
EXTRA=${EXTRA:-}
PY=${PY:-.venv/bin/python}
ALL="polyp-seg skin-seg skin-cls chest-xray-cls chest-anatomy"  # lung-seg retired: chest-anatomy draws the lungs
ONLY=${ONLY:-$ALL}

declare -A CONFIG=(
  [polyp-seg]=configs/polyp.yaml [skin-seg]=configs/skin-seg.yaml [skin-cls]=configs/skin-cls.yaml
  [chest-xray-cls]=configs/chest-xray-cls.yaml [lung-seg]=configs/lung-seg.yaml
  [chest-anatomy]=configs/chest-anatomy.yaml
)
declare -A EXTERNAL=(  # another source that never trains the model: "name=folder"
  [skin-seg]=ham10000=../shared/datasets/ham10000
)

medlens() { "$PY" -m medlens "$@"; }

train() {  # name config
  local name=$1 config=$2 launcher=("$PY" -m medlens)
  if ((NPROC > 1)); then
    launcher=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m medlens)
  fi
  if [[ -f $RUNS/$name/checkpoints/last.pt ]]; then
    "${launcher[@]}" train --resume "$RUNS/$name" $EXTRA
  else
    "${launcher[@]}" train --config "$config" --out "$RUNS" --name "$name" $EXTRA
  fi
}

for name in $ONLY; do
  config=${CONFIG[$name]:?"unknown model $name (one of: $ALL)"}
  echo "== $name ($config)"
  train "$name" "$config"
  medlens bundle "$RUNS/$name" --out "$MODELS/$name"
  for split in val test; do
    medlens evaluate "$MODELS/$name" --split "$split" --out "$EVAL/$name-$split" --record "$split"
  done
  if [[ -n ${EXTERNAL[$name]:-} ]]; then
    source_name=${EXTERNAL[$name]%%=*} folder=${EXTERNAL[$name]#*=}
    medlens evaluate "$MODELS/$name" "$folder" --out "$EVAL/$name-$source_name" --record "external:$source_name"
  fi
done
echo "bundles in $MODELS/, reports in $EVAL/"

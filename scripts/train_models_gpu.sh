#!/usr/bin/env bash
# Continue training both embedded models on a GPU machine within a time budget, then export them.
#   bash scripts/train_models_gpu.sh [MINUTES_PER_MODEL]        (default 4)
# Runs are resumable (RUNS/<family>/state.pt): running the script again continues them. The
# exported weights land in EXPORT/<family>-small/ (default: a staging folder, not checkpoints/, so
# that the shipped adapters, whose fingerprints pin the base weights, keep working until they are
# retrained). Settings can be overridden from the environment; the test suite runs this script on
# CPU with tiny settings.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-4}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-$(( $(nproc) - 2 ))}   # scene generation is CPU work: all but two cores
BATCH=${BATCH:-64}
INSTANCES=${INSTANCES:-3}
STEPS=${STEPS:-3000}
LR=${LR:-5e-4}
EVAL_SCENES=${EVAL_SCENES:-100}
RUNS=${RUNS:-runs/gpu}
EXPORT=${EXPORT:-runs/gpu/export}
PYTHON=${PYTHON:-python3}
BF16=$([ "$DEVICE" = cuda ] && echo --bf16 || true)
for family in sam sam2; do
  "$PYTHON" -m samdemo train-base --family "$family" --run-dir "$RUNS/$family" \
    --init "checkpoints/$family-small/model.safetensors" --device "$DEVICE" $BF16 --workers "$WORKERS" \
    --threads 2 --batch "$BATCH" --instances "$INSTANCES" --steps "$STEPS" --lr "$LR" --warmup 50 --seed 11 \
    --eval-every 250 --eval-scenes "$EVAL_SCENES" --minutes "$MINUTES" --export "$EXPORT/$family-small"
done

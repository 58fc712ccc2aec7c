#!/usr/bin/env bash
# The prepared GPU check (issue 17): on one GPU, in under 8 minutes, measure
#   * per-step attack time and peak memory of SAM ViT-B / ViT-H and SAM 2.1 Hiera-T / Hiera-L at
#     1024 px (random init: timing does not depend on the weights), bf16 autocast on the encoder;
#   * one train-adapter iteration (sam-vit-b, the default 512-value SVD neck targets);
#   * evaluate throughput (images/s) on EVAL_IMAGES scenes;
#   * the embedded models' full app latency (click -> mask, 10-step attack, through the HTTP API);
#   * then, with the time left of BUDGET_S, continue training the embedded models
#     (scripts/train_models_gpu.sh, TRAIN_BASE_MINUTES per model).
# Writes $OUT/*.json and the summary $OUT/gpu_check.json.
#   bash benchmarks/gpu_check.sh                  # on the GPU machine
# Every setting can be overridden from the environment; tests/test_gpu_check.py runs it on CPU with
# tiny settings.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu_check}
ATTACK_MODELS=${ATTACK_MODELS:-sam-vit-b sam-vit-h sam2.1-hiera-tiny sam2.1-hiera-large}
ATTACK_STEPS=${ATTACK_STEPS:-10}
TRAIN_MODELS=${TRAIN_MODELS:-sam-vit-b}
TRAIN_BATCH=${TRAIN_BATCH:-4}
EVAL_MODEL=${EVAL_MODEL:-sam-vit-b}
EVAL_IMAGES=${EVAL_IMAGES:-8}
APP_MODELS=${APP_MODELS:-sam-small sam2-small}
APP_CLICKS=${APP_CLICKS:-10}
APP_ATTACKS=${APP_ATTACKS:-2}
TRAIN_BASE_MINUTES=${TRAIN_BASE_MINUTES:-2}
BUDGET_S=${BUDGET_S:-470}
STAGE_TIMEOUT=${STAGE_TIMEOUT:-240}
BF16=$([ "${DEVICE%%:*}" = cuda ] && echo --bf16 || true)
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
elapsed() { echo $(( $(date +%s) - START )); }

# shellcheck disable=SC2086
"$PYTHON" benchmarks/real_size.py --device "$DEVICE" $BF16 --stages attack --models $ATTACK_MODELS \
  --attack-steps "$ATTACK_STEPS" --timeout "$STAGE_TIMEOUT" --out "$OUT/attack.json" || echo "attack stage: errors recorded"
# shellcheck disable=SC2086
"$PYTHON" benchmarks/real_size.py --device "$DEVICE" $BF16 --stages train --models $TRAIN_MODELS \
  --attack-steps 2 --train-batch "$TRAIN_BATCH" --timeout "$STAGE_TIMEOUT" --out "$OUT/train.json" || echo "train stage: errors recorded"
"$PYTHON" benchmarks/real_size.py --device "$DEVICE" $BF16 --stages evaluate --models "$EVAL_MODEL" \
  --attack-steps "$ATTACK_STEPS" --eval-images "$EVAL_IMAGES" --timeout "$STAGE_TIMEOUT" --out "$OUT/evaluate.json" \
  || echo "evaluate stage: errors recorded"
for model in $APP_MODELS; do
  "$PYTHON" benchmarks/app_latency.py --device "$DEVICE" --model "$model" --clicks "$APP_CLICKS" --fresh 1 \
    --attacks "$APP_ATTACKS" --out "$OUT/app_latency_$model.json" || echo "app latency $model: failed"
done
LEFT=$(( BUDGET_S - $(elapsed) ))
if [ "$TRAIN_BASE_MINUTES" != 0 ] && [ "$LEFT" -gt $(( TRAIN_BASE_MINUTES * 2 * 60 + 60 )) ]; then
  DEVICE="$DEVICE" RUNS="$OUT/runs" EXPORT="$OUT/export" PYTHON="$PYTHON" \
    bash scripts/train_models_gpu.sh "$TRAIN_BASE_MINUTES" > "$OUT/train_base.log" 2>&1 || echo "train_models_gpu.sh failed"
  TRAINED_BASE=1
else
  echo "no time left for scripts/train_models_gpu.sh ($LEFT s of the budget left)"
  TRAINED_BASE=0
fi
"$PYTHON" - "$OUT" "$(elapsed)" "$TRAINED_BASE" <<'PY'
import json, sys
from pathlib import Path
out, seconds, trained = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1"
summary = {"seconds": seconds, "train_base_ran": trained, "parts": {}}
for path in sorted(out.glob("*.json")):
    if path.name != "gpu_check.json":
        summary["parts"][path.stem] = json.loads(path.read_text())
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
print(f"gpu_check: {seconds:.0f} s -> {out / 'gpu_check.json'}")
PY

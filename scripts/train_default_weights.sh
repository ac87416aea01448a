#!/usr/bin/env bash
# How the shipped default weights were trained on a 2-core CPU (see README, "Model card").
# Resumable: rerun the same script after an interruption and each model continues from runs/<key>/last.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/datasets/dfdc-faces}
OUT=${OUT:-runs}
COMMON=(--data-dir "$DATA" --output-dir "$OUT" --input-size 128 --batch-size 32 --threads 2)
done_or_run() {  # skip a model whose summary.json exists (it finished)
  local key=$1; shift
  if [[ -f "$OUT/$key/summary.json" ]]; then echo "== $key already trained"; return; fi
  echo "== training $key"; "$PY" "train_$key.py" "${COMMON[@]}" "$@"
}
# Custom models: ImageNet-pretrained MobileNetV2 trunk (offline weights), lower trunk learning rate.
done_or_run cross_attention --pretrained --epochs 4 --epoch-samples 8192 --lr 3e-4 --trunk-lr 1e-4 --time-budget 16
done_or_run cnn_transformer --pretrained --epochs 4 --epoch-samples 8192 --lr 3e-4 --trunk-lr 1e-4 --time-budget 14
# Teacher for the three from-scratch models: the mean logit of the two pretrained ones.
if [[ ! -f "$OUT/teacher_train.npz" ]]; then
  "$PY" distill_targets.py --data-dir "$DATA" --checkpoints "$OUT/cross_attention/best.pt" \
      "$OUT/cnn_transformer/best.pt" --out "$OUT/teacher_train.npz"
fi
SCRATCH=(--epochs 30 --epoch-samples 4096 --max-val-samples 1024 --lr 1e-3 --teacher "$OUT/teacher_train.npz" --distill-weight 0.5)
done_or_run efficientnet "${SCRATCH[@]}" --time-budget 24
done_or_run swin "${SCRATCH[@]}" --lr 5e-4 --time-budget 22
done_or_run xception "${SCRATCH[@]}" --time-budget 22
echo "== all trained"

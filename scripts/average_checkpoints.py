"""Average several training checkpoints of one run into one checkpoint (a uniform "model soup", as
stochastic weight averaging does at the end of training).

    .venv/bin/python scripts/average_checkpoints.py --out runs/rc34/ct_soup.pt \\
        runs/rc33/ct_enc_epoch18.pt runs/rc33/ct_enc_epoch19.pt runs/rc33/ct_enc_epoch20.pt

Why: the training engine's EMA (`--ema 0.995`) averages over a few hundred steps, about one epoch
here; epochs trained at one small rate lie in one basin, and their average over many epochs can sit
at a flatter point than any of them. Only checkpoints of the same architecture, input size and
architecture arguments can be averaged; that they come from one run at one rate is the caller's
judgement (docs/training.md says which were averaged and why).

The result is an ordinary checkpoint that `convert_models.py --checkpoint` and
`scripts/judge_candidate.py` read: the last input's config, history and time, the averaged EMA
weights (`model`) and raw weights (`raw_model`), and `averaged_from` (each input's file, SHA-256 and
epoch), which the converted manifest's training section records. Optimiser state is left out, so it
cannot be resumed as if it were one of the run's epochs; `--init-weights` reads it like any other.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fileio import sha256_of  # noqa: E402
from training_engine import load_checkpoint, save_checkpoint  # noqa: E402

# What must match for two checkpoints' weights to be averaged element by element.
SAME_MODEL_FIELDS = ("model", "input_size", "arch_args")
# Carried from the last input unchanged: what convert_models reads besides the weights.
CARRIED = ("config", "history", "epoch", "best_auc", "best_loss", "elapsed_s", "world")


def average_state_dicts(state_dicts: list[dict]) -> dict:
    """The element-wise mean of floating-point tensors; other tensors (batch-norm's
    `num_batches_tracked`) are taken from the last state dict. Raises ValueError if the key sets or
    shapes differ."""
    if not state_dicts:
        raise ValueError("nothing to average")
    keys = list(state_dicts[0])
    for i, sd in enumerate(state_dicts[1:], 1):
        if list(sd) != keys:
            raise ValueError(f"input {i + 1} has other tensors than input 1")
    out = {}
    for k in keys:
        tensors = [sd[k] for sd in state_dicts]
        if any(t.shape != tensors[0].shape for t in tensors):
            raise ValueError(f"{k}: shapes differ ({[tuple(t.shape) for t in tensors]})")
        if tensors[0].is_floating_point():
            # Summed in float64 so that eleven fp32 inputs lose nothing to the order of addition.
            out[k] = (torch.stack([t.double() for t in tensors]).mean(0)).to(tensors[0].dtype)
        else:
            out[k] = tensors[-1].clone()
    return out


def average_checkpoints(paths: list[Path]) -> dict:
    """One checkpoint dict averaging `paths` (see the module docstring)."""
    if len(paths) < 2:
        raise ValueError("give at least two checkpoints")
    ckpts = [load_checkpoint(p) for p in paths]
    configs = [json.loads(c["config"]) for c in ckpts]
    for path, config in zip(paths[1:], configs[1:]):
        for field in SAME_MODEL_FIELDS:
            if config.get(field) != configs[0].get(field):
                raise ValueError(f"{path}: {field} is {config.get(field)!r}, {paths[0]} has {configs[0].get(field)!r}")
    out = {k: ckpts[-1][k] for k in CARRIED if k in ckpts[-1]}
    out["model"] = average_state_dicts([c["model"] for c in ckpts])
    if all("raw_model" in c for c in ckpts):
        out["raw_model"] = average_state_dicts([c["raw_model"] for c in ckpts])
    out["averaged_from"] = json.dumps([{"file": str(p), "sha256": sha256_of(p), "epoch": int(c["epoch"]) + 1}
                                       for p, c in zip(paths, ckpts)])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.out.resolve() in {c.resolve() for c in a.checkpoints}:
        raise SystemExit("--out must not be one of the inputs")
    try:
        averaged = average_checkpoints(a.checkpoints)
    except (ValueError, KeyError, OSError) as e:      # a clear message, not a traceback
        raise SystemExit(f"cannot average: {e}") from None
    a.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(a.out, averaged)
    epochs = [e["epoch"] for e in json.loads(averaged["averaged_from"])]
    print(json.dumps({"out": str(a.out), "epochs": epochs, "tensors": len(averaged["model"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Teacher logits for distillation: average the logits of trained checkpoints on a dataset split.

python distill_targets.py --data-dir ../shared/datasets/dfdc-faces \
    --checkpoints runs/cross_attention/best.pt runs/cnn_transformer/best.pt --out runs/teacher_train.npz

A teacher is a training checkpoint (.pt) or a converted model's manifest (.json, e.g.
converted_models/cnn_transformer.json: verified by its checksum), so a fresh clone can distil from
the shipped voters without their training runs.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import data_handler
from model_store import load_converted_model, model_from_checkpoint
from registry import get_spec


@torch.no_grad()
def checkpoint_logits(checkpoint: str, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Raw logits (no temperature, no flip) of one teacher on uint8 HWC images."""
    if str(checkpoint).endswith(".json"):
        loaded = load_converted_model(checkpoint)
        model, manifest = loaded.model.float().eval(), loaded.manifest
        transform = data_handler.eval_transform(manifest["input_size"], manifest["mean"], manifest["std"])
    else:
        model, config, _ = model_from_checkpoint(checkpoint)
        spec = get_spec(config["model"])
        transform = data_handler.eval_transform(config["input_size"], *spec.normalisation(config.get("arch_args")))
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2)
        out.append(model(transform(batch)).reshape(-1).numpy())
    return np.concatenate(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--size", type=int, default=128, help="cache size the training reads")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    records = data_handler.load_records(a.data_dir)
    split = data_handler.load_split(records, a.split, a.size)
    logits = np.mean([checkpoint_logits(c, split.images) for c in a.checkpoints], axis=0)
    np.savez(a.out, paths=np.array(split.paths), logits=logits.astype(np.float32))
    print(f"wrote {a.out}: {len(logits)} teacher logits from {len(a.checkpoints)} checkpoint(s)")


if __name__ == "__main__":
    main()

"""Experiment: can a model, as the registry builds it, fit a handful of faces at all?

A model that stays at chance on the whole train split (Swin, docs/training.md sessions 5, 17 and 18)
either cannot find the signal among 25,000 faces or is broken (no gradient, a frozen or constant
output). Fitting a few faces full-batch tells the two apart: a working network drives their training
loss down and their accuracy towards 1 within tens of steps. Prints loss, accuracy and the logits'
spread every few steps.

    .venv/bin/python scripts/experiments/fit_check.py --model swin --n 32 --steps 40 --lr 1e-4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import data_handler  # noqa: E402
from registry import get_spec  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="swin")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared/datasets/dfdc-faces"))
    p.add_argument("--split", default="val")
    p.add_argument("--n", type=int, default=32, help="faces to fit (one full batch)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    records = data_handler.load_records(a.data_dir)
    faces = data_handler.load_split(records, a.split, a.input_size, max_samples=a.n, seed=0)
    spec = get_spec(a.model)
    model = spec.build(a.input_size, False)
    transform = data_handler.eval_transform(a.input_size, *spec.normalisation(None))
    x = transform(torch.from_numpy(faces.images).permute(0, 3, 1, 2))
    y = torch.from_numpy(faces.labels).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.05)
    model.train()
    for step in range(a.steps):
        logits = model(x).reshape(-1)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 0 or step == a.steps - 1:
            accuracy = ((logits > 0).float() == y).float().mean().item()
            print(f"step {step:3d}  loss {loss.item():.4f}  accuracy {accuracy:.3f}  logit std {logits.std().item():.3f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Experiment: how closely does a converted model fit its training faces, against val?

Continuations of the shipped models overfit (docs/training.md, sessions 23-30): training loss falls
while val loss rises. This measures the gap the shipped weights start from: the model's loss and
accuracy, in eval mode, on the same random sample of `train` and `val` faces, each cut as inference
cuts them (`eval`) and as training augments them (`train-aug`). Logits are the raw ones (no
temperature), as training sees them.

    .venv/bin/python scripts/experiments/fit_gap.py --model efficientnet --n 384
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import data_handler  # noqa: E402
from model_store import load_converted_model  # noqa: E402
from registry import get_spec  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="efficientnet")
    p.add_argument("--models-dir", default=str(ROOT / "converted_models"))
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared/datasets/dfdc-faces"))
    p.add_argument("--n", type=int, default=384, help="faces drawn from each split")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    loaded = load_converted_model(Path(a.models_dir) / f"{a.model}.json")
    model = loaded.model.eval()
    size = loaded.input_size
    mean, std = get_spec(a.model).normalisation(loaded.manifest["architecture"]["args"])
    records = data_handler.load_records(a.data_dir)
    transforms = {"eval": data_handler.eval_transform(size, mean, std),
                  "train-aug": data_handler.train_transform(size, mean, std)}
    print(f"{a.model}: raw-logit BCE / accuracy on {a.n} faces of each split (eval mode)")
    for split in ("train", "val"):
        faces = data_handler.load_split(records, split, max(size, 128), progress=False)
        picked = np.random.default_rng(a.seed).choice(len(faces.labels), a.n, replace=False)
        labels = torch.from_numpy(faces.labels[picked]).float()
        for name, transform in transforms.items():
            torch.manual_seed(a.seed)
            batch = torch.stack([transform(torch.from_numpy(np.ascontiguousarray(faces.images[i])).permute(2, 0, 1))
                                 for i in picked])
            with torch.no_grad():
                logits = torch.cat([model(chunk).reshape(-1) for chunk in batch.split(64)])
            loss = F.binary_cross_entropy_with_logits(logits, labels).item()
            accuracy = ((logits > 0).float() == labels).float().mean().item()
            print(f"  {split:5s} {name:9s} loss {loss:.4f}  accuracy {accuracy:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

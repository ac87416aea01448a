"""Experiment (session 39): does a model tell a real face from the same face self-blended?

A self-blend (`data_handler.self_blend`) is a real face blended back into itself through a soft mask
after a small colour shift and warp: no identity changes, so the only evidence is the blending
boundary and colour mismatch that every face swap leaves. Training with self-blends (`--sbi`) is the
published way to generalise to face-swap methods a detector never saw; this measures what a model
learnt of it on faces it never trained on: N real faces of a split (default `test`) against their own
self-blends (seeded per face, so every models folder sees the same blends), AUC per model and for the
ensemble, and for two folders the paired difference (second minus first) with its 90 % interval.

    .venv/bin/python scripts/experiments/self_blend_auc.py --models-dirs converted_models \
        runs/rc39/judge_sbi/candidate [--split test] [--n 500] [--threads 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data_handler  # noqa: E402
from evaluate import _read_crop  # noqa: E402
from metrics import paired_auc_difference  # noqa: E402
from nudge_sensitivity import emit  # noqa: E402
from registry import ENSEMBLE_KEY  # noqa: E402
from scoring import DEFAULT_MODELS_DIR, ScoringEngine  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402


def real_faces_and_their_blends(data_dir: str, split: str, n: int, seed: int = 0):
    """(crops, labels): n real faces of `split` (drawn with `seed`), then each one's self-blend."""
    records = data_handler.load_records(data_dir, seed=0)
    rows = records[(records["split"] == split) & (records["label"] == 0)]
    rows = rows.sample(n=min(n, len(rows)), random_state=seed)
    reals = [c for c in (_read_crop(path) for path in rows["path"]) if c is not None]
    blends = [data_handler.self_blend(face, np.random.default_rng((seed, i))) for i, face in enumerate(reals)]
    return reals + blends, np.array([0] * len(reals) + [1] * len(blends))


def logits_by_model(engine: ScoringEngine, crops: list[np.ndarray], keys: list[str]) -> dict[str, np.ndarray]:
    """Each model's calibrated logit, and the ensemble's logit over the models it votes with."""
    result = engine.score_crops(crops, models=keys)
    out = dict(result.model_logits)
    p = np.clip(result.ensemble_probability, 1e-12, 1 - 1e-12)
    out[ENSEMBLE_KEY] = np.log(p / (1 - p))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "dfdc-faces"))
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--models-dirs", nargs="+", default=[str(DEFAULT_MODELS_DIR)])
    p.add_argument("--models", nargs="*", default=None, help="default: every installed model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    crops, labels = real_faces_and_their_blends(a.data_dir, a.split, a.n)
    scored = {}
    for models_dir in a.models_dirs:
        engine = ScoringEngine(models_dir)
        keys = [k for k in (a.models or engine.loaded_keys) if k in engine.models]
        scored[models_dir] = logits_by_model(engine, crops, keys)
    result = {"split": a.split, "n_real": int((labels == 0).sum()),
              "auc": {d: {k: float(roc_auc_score(labels, z)) for k, z in by.items()} for d, by in scored.items()}}
    if len(a.models_dirs) >= 2:
        first, second = (scored[d] for d in a.models_dirs[:2])
        result["paired"] = {k: paired_auc_difference(labels, first[k], second[k])
                            for k in first if k in second}
    emit(result, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

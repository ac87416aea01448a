"""Experiment (issue 11): does averaging a crop's scores over more views than the mirror image make
them crop-stable enough to pay for the extra passes?

Each view set is scored through the same engine (the installed voting models), and
`stability.stability` measures, as `evaluate.py --stability` does, how far P(fake) moves when the
crop is re-cut (shift 5 %, scale +-5 %, other resize filter, JPEG 75). Results: docs/training.md.

    .venv/bin/python scripts/experiments/multiview_tta.py --threads 2 [SET ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import data_handler  # noqa: E402
import stability  # noqa: E402
from evaluate import _read_crop  # noqa: E402
from scoring import ScoringEngine, prepare_batch  # noqa: E402

S = 0.03   # view offset: 3 % of the side (the stability check moves the box by 5 %)
VIEW_SETS = {   # (dx, dy, scale, mirrored)
    "flip2": [(0, 0, 1, False), (0, 0, 1, True)],
    "diag4": [(0, 0, 1, False), (0, 0, 1, True), (S, S, 1, True), (-S, -S, 1, False)],
    "scale4": [(0, 0, 1, False), (0, 0, 1, True), (0, 0, 1 + S, True), (0, 0, 1 - S, False)],
    "cross6": [(0, 0, 1, False), (0, 0, 1, True), (S, 0, 1, False), (-S, 0, 1, True), (0, S, 1, True),
               (0, -S, 1, False)],
}


def view_logits(engine: ScoringEngine, views):
    """A replacement for engine.model_logits that averages raw logits over `views`."""
    def model_logits(key, crops):
        loaded = engine.models[key]
        out = []
        for start in range(0, len(crops), 32):
            part = crops[start:start + 32]
            batches = []
            for dx, dy, scale, mirrored in views:
                cut = [c if (dx, dy, scale) == (0, 0, 1) else stability.recut(c, dx, dy, scale) for c in part]
                batch = prepare_batch(cut, loaded.input_size, loaded.manifest["mean"], loaded.manifest["std"])
                batches.append(batch.flip(3) if mirrored else batch)
            z = engine.runners[key].logits(torch.cat(batches)).reshape(len(views), len(part)).mean(0)
            out.append(z)
        return np.concatenate(out).astype(np.float64) / loaded.temperature
    return model_logits


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("sets", nargs="*", default=list(VIEW_SETS))
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "dfdc-faces"))
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    engine = ScoringEngine(ROOT / "converted_models")
    voters = [k for k in engine.loaded_keys if k not in engine.advisory_keys]
    records = data_handler.load_records(a.data_dir, seed=0)
    rows = records[records["split"] == "test"].sample(n=a.samples, random_state=0)
    crops = [_read_crop(path) for path in rows["path"]]
    labels = rows["label"].to_numpy()
    for name in a.sets:
        engine.model_logits = view_logits(engine, VIEW_SETS[name])
        t0 = time.time()
        moved = stability.stability(engine, crops, voters, seed=0)
        scores = engine.score_crops(crops, voters)
        auc = {k: round(roc_auc_score(labels, scores.model_probabilities[k]), 4) for k in voters}
        auc["ensemble"] = round(roc_auc_score(labels, scores.ensemble_probability), 4)
        print(name, f"{time.time() - t0:.1f} s", json.dumps({k: {m: v[m] for m in ("mean", "p95", "max")}
                                                            for k, v in moved.items()}), "AUC", auc, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Experiment (issue 11): how far does each model's P(fake) move when the face is cut a pixel away?

`make bench`'s per-face agreement compares two pipelines whose boxes land within a pixel of each
other (IoU >= 0.985), and the voters still move by up to 0.15 there. That is one face (the bench's
video); this measures the same thing on many held-out faces. Each crop of a split is cut again, as
`faces.crop_face` would cut a box a pixel off: shifted by one pixel of the crop (right, down, both
up-left), and one pixel larger on each side (a bicubic resample, as `faces.crop_face` upsamples).
For each model and the ensemble: mean, 95th percentile and max |P(view) - P(crop)| pooled over the
views. Judges `--views-differ nudge` training (docs/training.md, session 17).

    .venv/bin/python scripts/experiments/nudge_sensitivity.py --split val --n 400 --threads 2 \
        [--models-dir DIR] [--models KEY ...] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import data_handler  # noqa: E402
import stability  # noqa: E402
from evaluate import _read_crop  # noqa: E402
from registry import ENSEMBLE_KEY  # noqa: E402
from scoring import DEFAULT_MODELS_DIR, ScoringEngine  # noqa: E402


def pixel_views(crop: np.ndarray) -> dict[str, np.ndarray]:
    """The crop cut a pixel away: whole-pixel shifts (an exact copy of shifted pixels, mirrored at the
    border) and a box one pixel larger on every side."""
    size = crop.shape[0]
    px = 1.0 / size
    return {
        "right": stability.recut(crop, px, 0.0, 1.0),
        "down": stability.recut(crop, 0.0, px, 1.0),
        "up_left": stability.recut(crop, -px, -px, 1.0),
        "larger": stability.recut(crop, 0.0, 0.0, 1.0 + 2 * px),
    }


def nudge_sensitivity(engine: ScoringEngine, crops: list[np.ndarray], keys: list[str], batch: int = 64) -> dict:
    diffs = stability.view_diffs(engine, crops, keys, pixel_views, batch)
    return {k: stability.dp_summary(stability.faces_by_views(by_view)) for k, by_view in diffs.items()}


def emit(result: dict, json_path: str | None) -> None:
    """Print an experiment's result as JSON, and write it to `json_path` when one is given."""
    print(json.dumps(result, indent=1))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "dfdc-faces"))
    p.add_argument("--split", default="val")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    p.add_argument("--models", nargs="*", default=None, help="default: every installed model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    engine = ScoringEngine(a.models_dir)
    keys = [k for k in (a.models or engine.loaded_keys) if k in engine.models]
    records = data_handler.load_records(a.data_dir, seed=0)
    rows = records[records["split"] == a.split]
    rows = rows.sample(n=min(a.n, len(rows)), random_state=0)
    crops = [c for c in (_read_crop(path) for path in rows["path"]) if c is not None]
    result = {"split": a.split, "n": len(crops), "models_dir": a.models_dir,
              "dp": nudge_sensitivity(engine, crops, keys)}
    emit(result, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measurement (session 36): does scoring the voters' four test-time views in smaller model calls cost time?

`scoring.MAX_IMAGES_PER_CALL` caps the images one model call carries (crops x views). 128 images per
call (32 crops x 4 views) raised `make bench`'s peak RSS by 115 MB over two views; 64 holds it. This
times `ScoringEngine.model_logits` for every voting member on the same 100 face crops (the benchmark's
astronaut, each cut a few pixels apart) at each cap, alternating the caps, and prints the median of
`--runs` runs each. Run it on an idle machine (stop any training with `kill -STOP` first).

    .venv/bin/python scripts/experiments/view_batch_size.py --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import scoring  # noqa: E402
from benchmark import astronaut_face  # noqa: E402
from pipeline import load_engine  # noqa: E402


def crops(n: int = 100, seed: int = 0) -> list[np.ndarray]:
    face = astronaut_face()
    rng = np.random.default_rng(seed)
    h, w = face.shape[:2]
    out = []
    for _ in range(n):
        dx, dy = rng.integers(0, 8, 2)
        out.append(cv2.resize(np.ascontiguousarray(face[dy:dy + h - 8, dx:dx + w - 8]), (224, 224)))
    return out


def timing_setup(threads: int):
    """The installed engine on `threads` threads, the 100 crops, and the members that vote (the ones
    whose scores average test-time views): what the view timings share (view_cost.py too)."""
    import torch
    torch.set_num_threads(threads)
    engine = load_engine(scoring.DEFAULT_MODELS_DIR)
    return engine, crops(), [k for k in engine.loaded_keys if engine.uses_tta(k)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--caps", type=int, nargs="+", default=[64, 128], help="images per model call")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    engine, faces, voters = timing_setup(a.threads)
    times: dict[int, list[float]] = {cap: [] for cap in a.caps}
    for _ in range(a.runs):
        for cap in a.caps:
            scoring.MAX_IMAGES_PER_CALL = cap
            t = time.perf_counter()
            for key in voters:
                engine.model_logits(key, faces)
            times[cap].append(time.perf_counter() - t)
    print(json.dumps({"voters": voters, "faces": len(faces), "views": {k: scoring.view_count(engine.views_for(k)) for k in voters},
                      "seconds": {cap: {"runs": [round(x, 2) for x in v], "median": round(float(np.median(v)), 2)}
                                  for cap, v in times.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

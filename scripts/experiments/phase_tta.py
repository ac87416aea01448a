"""Experiment (issue 11): does a test-time view one pixel away cancel the models' one-pixel wobble?

Sliding a face's box across two pixels moves the ensemble up and back down with a period of about two
pixels of the model's input (docs/training.md, session 35): the stride-2 layers see the face on the
other phase of their grid. Views a whole number of periods apart wobble together, which is why session
2's views 3 % of the side apart (about four pixels) did not pay; a view half a period (one pixel) away
should wobble the other way. Each variant below sets which views of the model's input each voter
averages (raw logits, before its temperature); all are batched as the shipped flip is.

Measured per variant, with the installed models:
  * `nudge`: |dP| between a val crop and the same crop cut a pixel away (scripts/experiments/
    nudge_sensitivity.py's four views), on --n val faces;
  * `bench`: per-face |dP| between the bench video's faces as ours and the naive pipeline find them
    (benchmark.py's agreement, the issue's target), from boxes saved by a first run (--pairs);
  * `auc`: val AUC of each member and the ensemble on --auc-n val faces (ranking must not suffer).

    .venv/bin/python scripts/experiments/phase_tta.py --threads 2 --pairs runs/rc35/bench_pairs.json \
        --json runs/rc35/phase_tta.json
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data_handler  # noqa: E402
from evaluate import _read_crop  # noqa: E402
from nudge_sensitivity import nudge_sensitivity  # noqa: E402
from registry import EIGHT_VIEW_SHIFTS  # noqa: E402
from scoring import DEFAULT_MODELS_DIR, ScoringEngine, diagonal_views, shifted, tta_views  # noqa: E402


# "shipped": the crop and its mirror, the views shipped until session 35 installed the last one below
# (the installed temperatures are fitted on that one since, so rerun figures differ from session 35's).
VARIANTS = {
    "flip (shipped)": lambda b: [b, b.flip(3)],
    "flip of a one-pixel shift": lambda b: [b, shifted(b, 0, 1).flip(3)],
    "flip, one-pixel diagonal shift, its flip": lambda b: [b, b.flip(3), shifted(b, 1, 1), shifted(b, 1, 1).flip(3)],
    # A vertical shift commutes with the mirror, so a mirrored face gets the same four views (the
    # score stays exactly mirror-invariant); the mirror itself puts x on the other phase (even width).
    "flip, one-pixel vertical shift, its flip": lambda b: [b, b.flip(3), shifted(b, 0, 1), shifted(b, 0, 1).flip(3)],
    # The diagonal shift made mirror-invariant: the crop and its mirror, each moved one pixel right and
    # down (a mirrored face gets the same four views): the set installed in session 35.
    "flip, both moved one pixel diagonally": tta_views,
}


# The eight views of session 37 (scoring.diagonal_views; a registry entry's `test_time_shifts` would
# give them to a member): the crop and its mirror, each moved 0-3 pixels right and down.
eight_views = partial(diagonal_views, shifts=EIGHT_VIEW_SHIFTS)


# Per-member view sets (session 37): the cheap members (cross_attention, cnn_transformer: 0.21 GFLOP a
# view, against xception's ~1.5) can afford more views where a member-wide doubling could not; the
# members not named keep their own (scoring.views_of).
CHEAP = ("cross_attention", "cnn_transformer")
PER_MEMBER = {
    "eight views for cross_attention": {"cross_attention": eight_views},
    "eight views for cross_attention and cnn_transformer": {k: eight_views for k in CHEAP},
    # Session 38: efficientnet (0.38 GFLOP a view) moved most on session 37's held-out faces.
    "eight views for every voter but xception": {k: eight_views for k in (*CHEAP, "efficientnet")},
}
VARIANTS["eight views for every voter"] = eight_views


def views_of_variant(name: str, keys) -> dict:
    """The engine's per-member view overrides (ScoringEngine.views) for one variant."""
    return PER_MEMBER[name] if name in PER_MEMBER else dict.fromkeys(keys, VARIANTS[name])


def bench_pairs(path: Path, frames: int = 100, seconds: float = 20.0) -> list:
    """(frame, box ours, box naive) for each face of the bench video, from one run of both pipelines."""
    if path.exists():
        return json.loads(path.read_text())
    import benchmark
    from pipeline import load_engine

    media = ROOT / "bench-output" / "media"
    media.mkdir(parents=True, exist_ok=True)
    video = benchmark.make_video(media / f"moving_face_{seconds:g}s_720p.mp4", seconds)
    engine = load_engine(DEFAULT_MODELS_DIR)
    ours = benchmark.ours_video(video, engine, frames)
    naive = benchmark.Naive(DEFAULT_MODELS_DIR, engine).video(video, frames)
    pairs = []
    for a in ours["faces"]:
        same = [b for b in naive["faces"] if b["frame"] == a["frame"]]
        if same:
            b = max(same, key=lambda b: benchmark._iou(a["box"], b["box"]))
            pairs.append([a["frame"], a["box"], b["box"]])
    path.write_text(json.dumps({"video": str(video.relative_to(ROOT)), "pairs": pairs}))
    return json.loads(path.read_text())


def summary(d) -> dict:
    d = np.abs(np.asarray(d))
    return {"max": round(float(d.max()), 4), "p95": round(float(np.percentile(d, 95)), 4),
            "mean": round(float(d.mean()), 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "dfdc-faces"))
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--auc-n", type=int, default=1500)
    p.add_argument("--nudge-seed", type=int, default=0,
                   help="which val faces the nudge uses (0: nudge_sensitivity.py's; another seed gives faces "
                        "no variant was chosen on)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pairs", default="runs/bench_pairs.json")
    p.add_argument("--variants", nargs="*", default=[*VARIANTS, *PER_MEMBER])
    p.add_argument("--nudge-only", action="store_true", help="only the nudge (e.g. on another --nudge-seed)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from sklearn.metrics import roc_auc_score

    from faces import crop_face
    from subpixel_crop import read_frames

    saved = bench_pairs(ROOT / a.pairs)
    frames = read_frames(ROOT / saved["video"], {f for f, _, _ in saved["pairs"]})
    ours_crops = [crop_face(frames[f], box) for f, box, _ in saved["pairs"]]
    naive_crops = [crop_face(frames[f], box) for f, _, box in saved["pairs"]]
    records = data_handler.load_records(a.data_dir, seed=0)
    val = records[records["split"] == "val"]
    nudge_rows = val.sample(n=min(a.n, len(val)), random_state=a.nudge_seed)
    nudge_crops = [c for c in (_read_crop(x) for x in nudge_rows["path"]) if c is not None]
    auc_rows = val.sample(n=0 if a.nudge_only else min(a.auc_n, len(val)), random_state=1)
    auc_crops, labels = [], []
    for path, label in zip(auc_rows["path"], auc_rows["label"]):
        c = _read_crop(path)
        if c is not None:
            auc_crops.append(c)
            labels.append(int(label))
    result = {"nudge_seed": a.nudge_seed, "n_nudge": len(nudge_crops), "n_auc": len(auc_crops), "bench_pairs": len(ours_crops), "variants": {}}
    for name in a.variants:
        engine = ScoringEngine(DEFAULT_MODELS_DIR)
        keys = engine.loaded_keys
        engine.views = views_of_variant(name, keys)
        bench, auc = {"ensemble": None}, {"ensemble": None}
        if not a.nudge_only:
            ra, rb = engine.score_crops(ours_crops, keys), engine.score_crops(naive_crops, keys)
            bench = {"ensemble": summary(ra.ensemble_probability - rb.ensemble_probability)}
            bench.update({k: summary(ra.model_probabilities[k] - rb.model_probabilities[k]) for k in keys})
            scored = engine.score_crops(auc_crops, keys)
            auc = {"ensemble": round(float(roc_auc_score(labels, scored.ensemble_probability)), 5)}
            auc.update({k: round(float(roc_auc_score(labels, scored.model_logits[k])), 5) for k in keys})
        nudge = nudge_sensitivity(engine, nudge_crops, keys)
        result["variants"][name] = {"bench": bench, "auc": auc, "nudge": nudge}
        print(name, json.dumps({"bench_ensemble": bench["ensemble"], "auc_ensemble": auc["ensemble"],
                                "nudge_ensemble": nudge.get("ensemble")}), flush=True)
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

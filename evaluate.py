"""Evaluate the installed detectors on a labelled dataset (GUIDE.md section 5).

    python evaluate.py --data-dir ../shared/datasets/dfdc-faces --split test [--json]
    python evaluate.py --data-dir ../shared/datasets/ffhq-stylegan2-faces --split test
    python evaluate.py --data-dir my_videos/ --frames 32          # real/ and fake/ videos or photos

Face-crop datasets (like dfdc-faces) are scored as they are: the crops already have the training
geometry. Folders of videos (and of full photos, with --find-faces) go through face finding first;
a frame's score is its most suspicious face's, and a video's score is the mean of its frame scores.
Reports frame-level AUC, AP, EER and accuracy at the threshold for each model and the ensemble, and
video-level AUC for videos.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import data_handler
from media import ACCEPTED_EXTENSIONS, VIDEO_EXTENSIONS, MediaError
from metrics import binary_metrics, video_level_auc
from model_store import DEFAULT_MODELS_DIR
from registry import ENSEMBLE_KEY
from scoring import ScoringEngine, sigmoid

CHUNK = 256


def _read_crop(path: str) -> np.ndarray | None:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - unreadable files are counted, not fatal
        return None


def score_face_crops(engine: ScoringEngine, paths: list[str], models=None, progress=True):
    """Calibrated logits of each model for face-crop files; returns (logits by model, kept mask)."""
    keys = [k for k in (models or engine.loaded_keys) if k in engine.models]
    logits = {k: [] for k in keys}
    kept = np.zeros(len(paths), bool)
    for start in range(0, len(paths), CHUNK):
        crops, idx = [], []
        for i in range(start, min(start + CHUNK, len(paths))):
            crop = _read_crop(paths[i])
            if crop is not None:
                crops.append(crop)
                idx.append(i)
        kept[idx] = True
        if crops:
            for k in keys:
                logits[k].append(engine.model_logits(k, crops))
        if progress:
            print(f"  scored {min(start + CHUNK, len(paths))}/{len(paths)}", file=sys.stderr, flush=True)
    return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in logits.items()}, kept


def score_media_files(engine: ScoringEngine, paths: list[str], frames: int, models=None):
    """Face finding + scoring for photos/videos: per-frame rows (file, frame, calibrated logits)."""
    from pipeline import analyze_path

    keys = [k for k in (models or engine.loaded_keys) if k in engine.models]
    rows = []
    for n, path in enumerate(paths):
        try:
            analysis = analyze_path(path, engine, num_frames=frames, models=keys)
        except MediaError as exc:
            print(f"  skipped: {exc}", file=sys.stderr)
            continue
        by_frame: dict[int, list] = {}
        for r in analysis.faces:
            by_frame.setdefault(r.frame, []).append(r)
        for frame, recs in by_frame.items():
            ens = [float(engine.combine({k: np.array([r.logits[k]]) for k in keys}, keys)[0]) for r in recs]
            top = recs[int(np.argmax(ens))]   # the frame's most suspicious face
            rows.append({"file": path, "frame": frame, **{k: top.logits[k] for k in keys}})
        print(f"  analysed {n + 1}/{len(paths)}", file=sys.stderr, flush=True)
    return pd.DataFrame(rows), keys


def engine_for(models_dir, fast: bool = False) -> ScoringEngine:
    """The installed models as predict.py scores with them; `fast`: as with --fast, one view per face
    (tta "none" is the same for every member: advisory ones are scored once either way)."""
    return ScoringEngine(models_dir, tta="none" if fast else "voters")


def evaluate(data_dir: str, split: str = "test", models_dir=DEFAULT_MODELS_DIR, models=None, threshold=None,
             frames: int = 32, find_faces: bool = False, max_samples: int | None = None, seed: int = 0,
             fast: bool = False) -> dict:
    """Metrics of every chosen model and the ensemble on one split (`fast`: one view per face, as the
    fast mode of predict.py scores; the temperatures stay the installed ones)."""
    engine = engine_for(models_dir, fast)
    engine.require_models()
    threshold = engine.default_threshold if threshold is None else threshold
    records = data_handler.load_records(data_dir, seed=seed) if not _is_media_folder(data_dir) else \
        _media_records(data_dir)
    rows = records[records["split"] == split]
    if max_samples and len(rows) > max_samples:
        rows = rows.sample(n=max_samples, random_state=seed)
    paths, labels = rows["path"].tolist(), rows["label"].to_numpy()
    t0 = time.time()
    has_video = any(Path(p).suffix.lower() in VIDEO_EXTENSIONS for p in paths)
    result = {"data_dir": str(data_dir), "split": split, "threshold": threshold, "test_time_views": engine.tta,
              "models": {}}
    if has_video or find_faces:
        table, keys = score_media_files(engine, paths, frames, models)
        label_of = dict(zip(paths, labels))
        if table.empty:
            raise MediaError("no faces found in any file")
        y = table["file"].map(label_of).to_numpy()
        logits = {k: table[k].to_numpy() for k in keys}
        video_ids = table["file"].tolist()
        result["files"] = int(table["file"].nunique())
        result["files_without_face"] = int(len(paths) - table["file"].nunique())
    else:
        logits, kept = score_face_crops(engine, paths, models)
        keys = list(logits)
        y = labels[kept]
        video_ids = None
        result["unreadable"] = int((~kept).sum())
    for k in keys:
        result["models"][k] = binary_metrics(y, sigmoid(logits[k]), threshold)
    ens = engine.combine(logits, keys)
    result["models"][ENSEMBLE_KEY] = binary_metrics(y, ens, threshold)
    if video_ids is not None:
        for k in keys:
            result["models"][k]["video_auc"] = video_level_auc(video_ids, y, sigmoid(logits[k]))
        result["models"][ENSEMBLE_KEY]["video_auc"] = video_level_auc(video_ids, y, ens)
    result["n"] = int(len(y))
    result["seconds"] = round(time.time() - t0, 1)
    result["_logits"] = logits
    result["_labels"] = y
    return result


def _is_media_folder(data_dir: str) -> bool:
    root = Path(data_dir)
    if not root.is_dir() or (root / "metadata.csv").exists():
        return False
    return any(p.suffix.lower() in VIDEO_EXTENSIONS for p in root.rglob("*") if p.is_file())


def _media_records(data_dir: str) -> pd.DataFrame:
    rows = []
    for name, label in data_handler.LABELS.items():
        for p in sorted((Path(data_dir) / name).rglob("*")):
            if p.is_file() and p.suffix.lower() in ACCEPTED_EXTENSIONS:
                rows.append({"path": str(p), "label": label, "group": p.stem})
    records = pd.DataFrame(rows)
    # A folder of media without a manifest is one evaluation set: every file is in `test`.
    records["split"] = "test"
    return records


def format_table(result: dict) -> str:
    lines = [f"{result['data_dir']} [{result['split']}] n={result['n']} threshold={result['threshold']}",
             f"{'model':<16}{'AUC':>8}{'AP':>8}{'EER':>8}{'ACC':>8}{'P|real':>8}{'FPR':>8}{'P|fake':>8}{'TPR':>8}" +
             (f"{'vAUC':>8}" if "video_auc" in result["models"][ENSEMBLE_KEY] else "")]
    for k, m in result["models"].items():
        fmt = lambda v: f"{v:8.4f}" if isinstance(v, float) and not math.isnan(v) else f"{'n/a':>8}"  # noqa: E731
        line = f"{k:<16}" + "".join(fmt(m[name]) for name in
                                    ("auc", "ap", "eer", "accuracy", "real_mean_p", "fpr", "fake_mean_p", "tpr"))
        if "video_auc" in m:
            line += fmt(m["video_auc"])
        lines.append(line)
    return "\n".join(lines)


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def stability_report(data_dir: str, split: str, models_dir, models, samples: int, crops: bool,
                     reframing_n: int, seed: int = 0, fast: bool = False) -> dict:
    """`stability.stability` over `samples` crops and/or `stability.reframing` over `reframing_n`
    crops of one split, drawn with a fixed seed (the same crops every run)."""
    import stability

    engine = engine_for(models_dir, fast)
    engine.require_models()
    records = data_handler.load_records(data_dir, seed=seed)
    rows = records[records["split"] == split]
    rows = rows.sample(n=min(len(rows), max(samples if crops else 0, reframing_n)), random_state=seed)
    images = [c for c in (_read_crop(p) for p in rows["path"]) if c is not None]
    command = f"python evaluate.py --data-dir {data_dir} --split {split}" + \
        (f" --stability --max-samples {samples}" if crops else "") + \
        (f" --reframing {reframing_n}" if reframing_n else "") + (" --fast" if fast else "")
    out = {"data_dir": str(data_dir), "split": split, "test_time_views": engine.tta, "command": command}
    t0 = time.time()
    if crops:
        out["stability"] = stability.stability(engine, images[:samples], models, seed=seed)
        out["stability_crops"] = len(images[:samples])
    if reframing_n:
        out["reframing"] = stability.reframing(engine, images[:reframing_n], models)
    out["seconds"] = round(time.time() - t0, 1)
    return out


def format_stability(result: dict) -> str:
    lines = [f"{result['data_dir']} [{result['split']}] test-time views: {result['test_time_views']}"]
    if "stability" in result:
        lines.append(f"crop stability over {result['stability_crops']} crops x 5 views, |dP|:")
        lines.append(f"{'model':<16}{'mean':>8}{'p95':>8}{'p95 90% CI':>18}{'max':>8}   mean by view")
        for k, m in result["stability"].items():
            views = " ".join(f"{v} {d:.3f}" for v, d in m["by_view"].items())
            lines.append(f"{k:<16}{m['mean']:8.4f}{m['p95']:8.4f}{_interval(m):>18}{m['max']:8.4f}   {views}")
    if "reframing" in result:
        r = result["reframing"]
        lines.append(f"re-framing: {r['faces']} crops x 4 canvas versions through face finding "
                     f"({r['versions_without_face']} versions without a face); spread of P(fake) per face:")
        lines.append(f"{'model':<16}{'mean':>8}{'p95':>8}{'p95 90% CI':>18}{'max':>8}")
        for k, m in r.items():
            if isinstance(m, dict):
                lines.append(f"{k:<16}{m['mean']:8.4f}{m['p95']:8.4f}{_interval(m):>18}{m['max']:8.4f}")
    return "\n".join(lines)


def _interval(summary: dict) -> str:
    """`stability.dp_summary`'s bootstrap interval of the 95th percentile, as printed."""
    ci = summary.get("p95_ci90")
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Evaluate the installed detectors on a labelled dataset.")
    p.add_argument("--data-dir", required=True, help="dataset folder (metadata.csv or real/ + fake/) or manifest")
    p.add_argument("--split", default="test", choices=data_handler.SPLITS)
    p.add_argument("--models", default=None, help="comma-separated model keys (default: all installed)")
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--frames", type=int, default=32, help="frames per video")
    p.add_argument("--find-faces", action="store_true", help="run face finding on images (full photos)")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--fast", action="store_true",
                   help="score as predict.py --fast does: one view per face instead of four")
    p.add_argument("--stability", action="store_true",
                   help="instead of accuracy: how much P(fake) moves under small re-cuts, the other resize filter "
                        "and JPEG 75 (stability.py); default 500 crops, see --max-samples")
    p.add_argument("--reframing", type=int, default=0, metavar="N",
                   help="instead of accuracy: N crops placed on a canvas four ways and analysed through face "
                        "finding; the spread of P(fake) per face (stability.py)")
    a = p.parse_args(argv)
    models = [m.strip() for m in a.models.split(",")] if a.models else None
    if a.stability or a.reframing:
        result = stability_report(a.data_dir, a.split, a.models_dir, models, a.max_samples or 500, a.stability,
                                  a.reframing, fast=a.fast)
        print(json.dumps(result, indent=2) if a.json else format_stability(result))
        return 0
    try:
        result = evaluate(a.data_dir, a.split, a.models_dir, models, a.threshold, a.frames, a.find_faces,
                          a.max_samples, fast=a.fast)
    except MediaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(public(result), indent=2) if a.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Do scores move less between near-identical boxes when the face crop follows the box to a fraction of
a pixel? (issue 11: `make bench`'s per-face agreement)

`faces.crop_face` rounds the square's corner and side to whole pixels, so two boxes 0.3 px apart can
give crops one pixel apart (and one pixel larger), which the models see as a shift of about half a
pixel of their input. This runs the bench's two pipelines once on the bench's video (faces found on
640 px frames vs full-size frames), then cuts each face pair again with each crop function and scores
both with the installed ensemble: the per-face |dP| the bench reports, per crop function.

    .venv/bin/python scripts/experiments/subpixel_crop.py --threads 2

Result (session 35, docs/training.md): it does not pay. The ensemble's max |dP| moves 0.083 -> 0.081
and its mean rises 0.010 -> 0.018: where whole pixels give most pairs the same crop, exact cuts make
every pair differ a little, and the models' response to a one-pixel move (up to 0.15 for a member) is
the same either way. The cure is in the models, not in the cut.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def read_frames(path: Path, indices: set[int]) -> dict[int, np.ndarray]:
    cap, frames, i = cv2.VideoCapture(str(path)), {}, 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i in indices:
            frames[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        i += 1
    cap.release()
    return frames


def area_weights(start: float, length: float, out: int, first: int, count: int) -> np.ndarray:
    """(out, count) weights of input pixels first..first+count-1 for `out` output pixels spanning
    [start, start + length): each output pixel averages the input over its footprint (area resampling,
    as cv2.INTER_AREA, but with fractional footprint edges)."""
    step = length / out
    lo = start + step * np.arange(out)[:, None]
    edges = first + np.arange(count)[None, :]
    overlap = np.clip(np.minimum(lo + step, edges + 1) - np.maximum(lo, edges), 0.0, None)
    return (overlap / step).astype(np.float32)


def crop_face_subpixel(image: np.ndarray, box, out_size: int = 224) -> np.ndarray:
    """faces.crop_face's square, cut at its exact (fractional) position and size: bicubic where it is
    enlarged (as crop_face's INTER_CUBIC), area-weighted where it is shrunk (as its INTER_AREA)."""
    from faces import crop_square
    cx, cy, side = crop_square(box)
    side = max(side, 1.0)
    x0, y0 = cx - side / 2, cy - side / 2
    k = side / out_size
    if k <= 1.0:
        m = np.array([[k, 0, x0 + 0.5 * k - 0.5], [0, k, y0 + 0.5 * k - 0.5]], np.float32)
        return cv2.warpAffine(image, m, (out_size, out_size), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    h, w = image.shape[:2]
    fx, fy = int(np.floor(x0)), int(np.floor(y0))
    n = int(np.ceil(side)) + 2
    sx0, sy0, sx1, sy1 = max(fx, 0), max(fy, 0), min(fx + n, w), min(fy + n, h)
    window = np.zeros((n, n, 3), np.float32)
    if sx1 > sx0 and sy1 > sy0:
        window[sy0 - fy:sy1 - fy, sx0 - fx:sx1 - fx] = image[sy0:sy1, sx0:sx1]
    wy = area_weights(y0, side, out_size, fy, n)
    wx = area_weights(x0, side, out_size, fx, n)
    out = np.einsum("ui,ijc,vj->uvc", wy, window, wx, optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def summary(d: np.ndarray) -> dict:
    d = np.abs(d)
    return {"max": round(float(d.max()), 4), "p90": round(float(np.percentile(d, 90)), 4),
            "mean": round(float(d.mean()), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)

    import benchmark
    import faces
    from pipeline import load_engine

    models_dir = ROOT / "converted_models"
    media = ROOT / "bench-output" / "media"
    media.mkdir(parents=True, exist_ok=True)
    video = benchmark.make_video(media / f"moving_face_{args.seconds:g}s_720p.mp4", args.seconds)
    engine = load_engine(models_dir)
    ours = benchmark.ours_video(video, engine, args.frames)
    naive = benchmark.Naive(models_dir, engine).video(video, args.frames)
    pairs = []
    for a in ours["faces"]:
        same = [b for b in naive["faces"] if b["frame"] == a["frame"]]
        if same:
            b = max(same, key=lambda b: benchmark._iou(a["box"], b["box"]))
            pairs.append((a["frame"], a["box"], b["box"], a["p"], b["p"]))
    frames = read_frames(video, {f for f, *_ in pairs})
    cutters = {"whole pixels (faces.crop_face)": faces.crop_face, "sub-pixel": crop_face_subpixel}
    report = {"video": str(video.name), "pairs": len(pairs),
              "bench_as_run": summary(np.array([a - b for *_, a, b in pairs]))}
    keys = [k for k in engine.models]
    for name, cut in cutters.items():
        crops_a = [cut(frames[f], box_a) for f, box_a, _, _, _ in pairs]
        crops_b = [cut(frames[f], box_b) for f, _, box_b, _, _ in pairs]
        ra, rb = engine.score_crops(crops_a, keys), engine.score_crops(crops_b, keys)
        row = {"ensemble": summary(ra.ensemble_probability - rb.ensemble_probability)}
        for k in keys:
            row[k] = summary(np.asarray(ra.model_probabilities[k]) - np.asarray(rb.model_probabilities[k]))
        report[name] = row
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

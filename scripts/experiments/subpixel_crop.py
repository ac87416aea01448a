"""Do scores move less between near-identical boxes when the face crop follows the box to a fraction of
a pixel? (issue 11: `make bench`'s per-face agreement)

`faces.crop_face` rounds the square's corner and side to whole pixels, so two boxes 0.3 px apart can
give crops one pixel apart (and one pixel larger), which the models see as a shift of about half a
pixel of their input. This runs the bench's two pipelines once on the bench's video (faces found on
640 px frames vs full-size frames), then cuts each face pair again with each crop function and scores
both with the installed ensemble: the per-face |dP| the bench reports, per crop function.

    .venv/bin/python scripts/experiments/subpixel_crop.py --threads 2

Result (session 35, docs/training.md; session 14 found the same with `settle_rounds.py`): it does not pay. The ensemble's max |dP| moves 0.083 -> 0.081
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
sys.path.insert(0, str(Path(__file__).resolve().parent))


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


def summary(d: np.ndarray) -> dict:
    d = np.abs(d)
    return {"max": round(float(d.max()), 4), "p90": round(float(np.percentile(d, 90)), 4),
            "mean": round(float(d.mean()), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--slide", type=int, default=5,
                   help="also slide the first N faces' boxes right by 0-2 px in 0.2 px steps and print the scores")
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
    from settle_rounds import crop_subpixel   # session 14's exact cut (bicubic warp; faces upsampled, as here)
    cutters = {"whole pixels (faces.crop_face)": faces.crop_face, "sub-pixel": crop_subpixel}
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
    report["slide_px"] = [round(float(d), 1) for d in np.linspace(0, 2, 11)]
    report["slide"] = []
    for f, (x1, y1, x2, y2), _, _, _ in pairs[::max(1, len(pairs) // max(args.slide, 1))][:args.slide]:
        for name, cut in cutters.items():
            res = engine.score_crops([cut(frames[f], (x1 + d, y1, x2 + d, y2)) for d in report["slide_px"]], keys)
            report["slide"].append({"frame": f, "cut": name,
                                    "ensemble": np.round(res.ensemble_probability, 3).tolist(),
                                    "efficientnet": np.round(res.model_probabilities["efficientnet"], 3).tolist()})
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

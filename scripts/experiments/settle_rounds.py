"""Experiment (issue 11, session 14): settle the boxes once or twice (`faces.SETTLE_ROUNDS`)?

`make bench` finds faces on 640 px frames (ours) and on full-size frames (the naive baseline), and
both settle the boxes on the full-size frame; after one round they still land ~1 px apart, and the
voters' P(fake) moves by up to 0.10 with that. A second round starts from the first round's box.

* video: frames of the benchmark's 720p video (every `--step`-th of the first 100 * step), faces found
  at 640 px and at full size (MTCNN as found), each settled 1, 2 and 3 rounds: 1 - IoU between the
  two, the ensemble |dP| between their crops (the bench's per-face figure; after two rounds also with
  the crop cut at sub-pixel precision, `crop_subpixel`), and the drift of round 2 against round 1
  (side ratio, centre shift in sides) on the full-size boxes;
* re-framing: `stability.reframing` (each crop on a grey canvas four ways, through face finding) on
  `--n` crops of `--split` (choose on val), with 1 and 2 rounds.

    .venv/bin/python scripts/experiments/settle_rounds.py --split val --n 100   # after make bench
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import data_handler  # noqa: E402
import faces  # noqa: E402
import stability  # noqa: E402
from evaluate import _read_crop  # noqa: E402
from scoring import ScoringEngine  # noqa: E402
from video_processor import box_iou, read_frames  # noqa: E402


def crop_subpixel(image: np.ndarray, box, out_size: int = faces.CANONICAL_CROP_SIZE) -> np.ndarray:
    """`faces.crop_face`'s square cut at sub-pixel precision: one bicubic warp straight from the box
    (same pixel-centre convention as its integer cut + resize, so equal to it when the square lies on
    whole pixels). Only for faces smaller than `out_size` (upsampled), as in the bench video."""
    cx, cy, side = faces.crop_square(box)
    assert side <= out_size, "the sub-pixel variant is only written for upsampled faces"
    a = side / out_size
    x0, y0 = cx - side / 2, cy - side / 2
    matrix = np.array([[a, 0, 0.5 * a - 0.5 + x0], [0, a, 0.5 * a - 0.5 + y0]])
    return cv2.warpAffine(image, matrix, (out_size, out_size), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _stats(values, spread: str = "max") -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": round(float(v.mean()), 4),
            spread: round(float(v.max() if spread == "max" else v.std()), 4)}


def video_part(engine, keys, frames, rounds: int = 3) -> dict:
    """Per settling round r (1..rounds, each from round r-1's boxes): 1 - IoU between the boxes found
    at 640 px and at full size, and the ensemble |dP| between their crops (whole-pixel crops, and at
    r = 2 also sub-pixel ones); the drift of round 2 against round 1 on the full-size boxes."""
    detector = faces.FaceDetector(consensus=False)
    onet = detector._mtcnn.onet
    out = {r: {"one_minus_iou": [], "dp": []} for r in range(1, rounds + 1)}
    out[2]["dp_subpixel"] = []
    drift = {"side_ratio": [], "dx": [], "dy": []}
    for frame in frames:
        small, full = detector.detect([frame], max_side=640)[0], detector.detect([frame], max_side=10_000)[0]
        if not small or not full:
            continue
        a, b, settled_full = np.array([small[0].box]), np.array([full[0].box]), {}
        for r in range(1, rounds + 1):
            with torch.inference_mode():
                a = faces.settle_boxes_at_face_size(onet, frame, a, rounds=1)[0]
                b = faces.settle_boxes_at_face_size(onet, frame, b, rounds=1)[0]
            settled_full[r] = b[0]
            out[r]["one_minus_iou"].append(1 - box_iou(a[0], b[0]))
            croppers = {"dp": faces.crop_face} | ({"dp_subpixel": crop_subpixel} if r == 2 else {})
            for name, crop in croppers.items():
                p = engine.score_crops([crop(frame, a[0]), crop(frame, b[0])], keys).ensemble_probability
                out[r][name].append(abs(float(p[0] - p[1])))
        r1, r2 = settled_full[1], settled_full[2]
        s1, s2 = max(r1[2] - r1[0], r1[3] - r1[1]), max(r2[2] - r2[0], r2[3] - r2[1])
        drift["side_ratio"].append(s2 / s1)
        drift["dx"].append(((r2[0] + r2[2]) - (r1[0] + r1[2])) / 2 / s1)
        drift["dy"].append(((r2[1] + r2[3]) - (r1[1] + r1[3])) / 2 / s1)
    summary = {f"rounds {r}": {k: _stats(v) for k, v in m.items()} | {"frames": len(m["dp"])}
               for r, m in out.items()}
    summary["round 2 vs 1"] = {k: _stats(v, "sd") for k, v in drift.items()}
    return summary


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--video", default=str(ROOT / "bench-output" / "media" / "moving_face_20s_720p.mp4"))
    p.add_argument("--step", type=int, default=5)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "dfdc-faces"))
    p.add_argument("--split", default="val")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    engine = ScoringEngine(ROOT / "converted_models")
    keys = [k for k in engine.loaded_keys if k not in engine.advisory_keys]   # the ensemble's voters
    t0 = time.time()
    result = {"command": " ".join(sys.argv), "voters": keys}
    if a.frames:
        frames = read_frames(a.video, list(range(0, a.frames * a.step, a.step)))
        result["video"] = video_part(engine, keys, [frames[i] for i in sorted(frames)])
        print(json.dumps(result["video"], indent=1), flush=True)
    if a.n:
        records = data_handler.load_records(a.data_dir, seed=0)
        rows = records[records["split"] == a.split].sample(n=a.n, random_state=0)
        crops = [c for c in (_read_crop(path) for path in rows["path"]) if c is not None]
        result["reframing"] = {}
        for rounds in (1, 2):
            faces.SETTLE_ROUNDS = rounds            # read at call time by the detector's settling
            r = stability.reframing(engine, crops, keys)
            result["reframing"][f"rounds {rounds}"] = r
            print(f"re-framing, {rounds} round(s): ensemble {r['ensemble']}; missed {r['versions_without_face']}; "
                  f"{time.time() - t0:.0f} s", flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Experiment (issue 11, session 14): settle the boxes once or twice (`faces.SETTLE_ROUNDS`)?

`make bench` finds faces on 640 px frames (ours) and on full-size frames (the naive baseline), and
both settle the boxes on the full-size frame; after one round they still land ~1 px apart, and the
voters' P(fake) moves by up to 0.10 with that. A second round starts from the first round's box.

* video: frames of the benchmark's 720p video (every `--step`-th of the first 100 * step), faces found
  at 640 px and at full size (MTCNN as found), each settled 1, 2 and 3 rounds: 1 - IoU between the
  two, the ensemble |dP| between their crops (the bench's per-face figure), and the drift of round 2
  against round 1 (side ratio, centre shift in sides) on the full-size boxes;
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


def iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def video_frames(path: str, step: int, count: int) -> list[np.ndarray]:
    cap, frames, i = cv2.VideoCapture(path), [], 0
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        if i % step == 0:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        i += 1
    return frames


def video_part(engine, keys, frames, rounds_list=(1, 2, 3)) -> dict:
    detector = faces.FaceDetector(consensus=False)
    onet = detector._mtcnn.onet
    out = {r: {"one_minus_iou": [], "dp": []} for r in rounds_list}
    drift = {"side_ratio": [], "dx": [], "dy": []}
    for frame in frames:
        small, full = detector.detect([frame], max_side=640)[0], detector.detect([frame], max_side=10_000)[0]
        if not small or not full:
            continue
        for r in rounds_list:
            with torch.inference_mode():
                a = faces.settle_boxes_at_face_size(onet, frame, np.array([small[0].box]), rounds=r)[0][0]
                b = faces.settle_boxes_at_face_size(onet, frame, np.array([full[0].box]), rounds=r)[0][0]
            out[r]["one_minus_iou"].append(1 - iou(a, b))
            p = engine.score_crops([faces.crop_face(frame, a), faces.crop_face(frame, b)], keys).ensemble_probability
            out[r]["dp"].append(abs(float(p[0] - p[1])))
        with torch.inference_mode():
            r1 = faces.settle_boxes_at_face_size(onet, frame, np.array([full[0].box]), rounds=1)[0][0]
            r2 = faces.settle_boxes_at_face_size(onet, frame, r1[None], rounds=1)[0][0]
        s1, s2 = max(r1[2] - r1[0], r1[3] - r1[1]), max(r2[2] - r2[0], r2[3] - r2[1])
        drift["side_ratio"].append(s2 / s1)
        drift["dx"].append(((r2[0] + r2[2]) - (r1[0] + r1[2])) / 2 / s1)
        drift["dy"].append(((r2[1] + r2[3]) - (r1[1] + r1[3])) / 2 / s1)
    summary = {f"rounds {r}": {k: {"mean": round(float(np.mean(v)), 4), "max": round(float(np.max(v)), 4)}
                               for k, v in m.items()} | {"frames": len(m["dp"])} for r, m in out.items()}
    summary["round 2 vs 1"] = {k: {"mean": round(float(np.mean(v)), 4), "sd": round(float(np.std(v)), 4)}
                               for k, v in drift.items()}
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
        result["video"] = video_part(engine, keys, video_frames(a.video, a.step, a.frames))
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

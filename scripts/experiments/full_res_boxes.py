"""Boxes found on 640 px video frames, re-placed at full resolution or not, against full-size detection
(issue 11, item 2: "the same box geometry in the fast path and the naive baseline").

The video path finds faces on frames downscaled to 640 px (pipeline.VIDEO_DETECTION_MAX_SIDE) and the
naive baseline of `make bench` on the full 1280x720 frame. For the benchmark's video and a harder one
(a face crossing the frame, a second entering), this runs `pipeline.analyze_video` (following on, as
shipped) with `FaceDetector.refine_at_full_resolution` off and on, detects the same frames at full
size the way the naive baseline does, and reports per face: box IoU against the full-size box, and
the ensemble P(fake) difference (each crop scored by the same engine, so only the box differs).

    .venv/bin/python scripts/experiments/full_res_boxes.py [--frames 100]

The IoU and P(fake) figures do not depend on machine load; the face-finding seconds do (pause
training before reading them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark  # noqa: E402
import pipeline  # noqa: E402
from face_following import make_fast_video  # noqa: E402
from faces import FaceDetector, crop_face, get_face_detector  # noqa: E402
from video_processor import box_iou, read_frames  # noqa: E402

OUT = ROOT / "bench-output"


def full_size_faces(video: Path, indices: list[int], engine) -> dict[int, list[tuple]]:
    """{frame: [(box, ensemble P(fake)), ...]} with faces found on the full-size frame (as the naive)."""
    detector = FaceDetector(max_side=10 ** 6, refine_at_full_resolution=False)
    frames = read_frames(str(video), indices)
    found: dict[int, list[tuple]] = {}
    for index, frame in frames.items():
        faces = detector.detect([frame], [index])[0]
        if faces:
            scores = engine.score_crops([crop_face(frame, f.box) for f in faces])
            found[index] = [(f.box, float(p)) for f, p in zip(faces, scores.ensemble_probability)]
    return found


def against_full_size(video: Path, engine, frames: int, refine: bool, reference: dict | None) -> tuple[dict, dict]:
    detector = get_face_detector()
    detector.refine_at_full_resolution = refine
    analysis = pipeline.analyze_video(str(video), engine, num_frames=frames)
    report = pipeline.build_report(analysis, engine)
    if reference is None:
        reference = full_size_faces(video, analysis.frame_indices, engine)
    ious, dps, unmatched = [], [], 0
    for face in report["faces"]:
        candidates = reference.get(face["frame"], [])
        best = max(candidates, key=lambda c: box_iou(face["box"], c[0]), default=None)
        if best is None or box_iou(face["box"], best[0]) < 0.5:
            unmatched += 1
            continue
        ious.append(box_iou(face["box"], best[0]))
        dps.append(abs(face["fake_probability"] - best[1]))
    figures = {
        "refine_at_full_resolution": refine, "faces": len(report["faces"]), "unmatched": unmatched,
        "faces_s": round(analysis.timings["faces_s"], 3),
        "box_iou_vs_full_size": {"min": round(min(ious), 3), "median": round(float(np.median(ious)), 3)},
        "ensemble_abs_dp_vs_full_size": {"mean": round(float(np.mean(dps)), 4),
                                         "p95": round(float(np.quantile(dps, 0.95)), 4),
                                         "max": round(float(np.max(dps)), 4)},
        "file_score": report["fake_probability"],
    }
    return figures, reference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args()
    engine = pipeline.load_engine(ROOT / "converted_models")
    videos = [benchmark.make_video(OUT / "media" / "moving_face_20s_720p.mp4", 20.0),
              make_fast_video(OUT / "media" / "fast_two_faces.mp4")]
    for video in videos:
        reference = None
        for refine in (False, True):
            figures, reference = against_full_size(video, engine, args.frames, refine, reference)
            print(json.dumps({"video": video.name, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

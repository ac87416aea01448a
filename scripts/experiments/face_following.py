"""Following faces between analysed frames versus searching every frame in full (issue 12).

For the benchmark's 720p video (a face moving ~1.4 px per frame) and a harder one (the face moving
~12 px per frame, a second face entering half-way), runs `pipeline.analyze_video` twice, with
`follow_faces` on and off, and reports: face-finding seconds (wall and CPU), frames searched in
full, frames where both found the same number of faces, the box IoU between the two per face, and
the ensemble P(fake) difference per face.

    .venv/bin/python scripts/experiments/face_following.py [--frames 100]

Run it on an idle machine (pause training): it times.
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

import benchmark  # noqa: E402
import pipeline  # noqa: E402
from video_processor import box_iou  # noqa: E402

OUT = ROOT / "bench-output"


def make_fast_video(path: Path, seconds: float = 8.0, fps: int = 25, size=(1280, 720)) -> Path:
    """Two faces: one crossing the frame at ~12 px per frame, one entering at half time."""
    width, height = size
    face = cv2.resize(benchmark.astronaut_face()[0:320, 64:384], (300, 300), interpolation=cv2.INTER_AREA)
    second = cv2.resize(face, (200, 200), interpolation=cv2.INTER_AREA)
    frames = int(seconds * fps)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    rng = np.random.default_rng(1)
    background = cv2.GaussianBlur(rng.integers(60, 200, (height, width, 3), dtype=np.uint8), (0, 0), 3)
    for i in range(frames):
        frame = background.copy()
        x = int(20 + (width - 340) * i / (frames - 1))
        y = int(200 + 60 * np.sin(i / 15))
        frame[y:y + 300, x:x + 300] = face
        if i >= frames // 2:
            frame[450:650, 1000:1200] = second
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def run(video: Path, engine, frames: int, follow: bool):
    t0, c0 = time.perf_counter(), time.process_time()
    analysis = pipeline.analyze_video(str(video), engine, num_frames=frames, follow_faces=follow)
    return analysis, time.perf_counter() - t0, time.process_time() - c0


def compare(video: Path, engine, frames: int) -> dict:
    run(video, engine, 10, True)                                   # warm-up
    full, full_wall, _ = run(video, engine, frames, False)
    followed, wall, _ = run(video, engine, frames, True)
    same, ious, dps = 0, [], []
    report_full = pipeline.build_report(full, engine)
    report_followed = pipeline.build_report(followed, engine)
    p_full = {(f["frame"], tuple(f["box"])): f["fake_probability"] for f in report_full["faces"]}
    p_followed = {(f["frame"], tuple(f["box"])): f["fake_probability"] for f in report_followed["faces"]}
    for index in full.frame_indices:
        a = [r.face for r in full.faces if r.face.frame == index]
        b = [r.face for r in followed.faces if r.face.frame == index]
        same += len(a) == len(b)
        for fa in a:
            best = max(b, key=lambda fb: box_iou(fa.box, fb.box), default=None)
            if best is not None and box_iou(fa.box, best.box) >= 0.5:
                ious.append(box_iou(fa.box, best.box))
                pa = p_full[(index, tuple(round(v, 1) for v in fa.box))]
                pb = p_followed[(index, tuple(round(v, 1) for v in best.box))]
                dps.append(abs(pa - pb))
    return {
        "video": video.name, "frames": frames,
        "faces_s": {"full": round(full.timings["faces_s"], 3), "followed": round(followed.timings["faces_s"], 3)},
        "decode_and_faces_wall_s": {"full": round(full.timings["decode_and_faces_s"], 3),
                                    "followed": round(followed.timings["decode_and_faces_s"], 3)},
        "analysis_wall_s": {"full": round(full_wall, 3), "followed": round(wall, 3)},
        "frames_searched_in_full": {"full": full.full_face_searches, "followed": followed.full_face_searches},
        "faces": {"full": len(full.faces), "followed": len(followed.faces)},
        "frames_with_same_face_count": f"{same}/{len(full.frame_indices)}",
        "box_iou": {"min": round(min(ious), 3), "median": round(float(np.median(ious)), 3)} if ious else None,
        "ensemble_abs_dp": {"mean": round(float(np.mean(dps)), 4), "max": round(max(dps), 4)} if dps else None,
        "file_score": {"full": report_full["fake_probability"], "followed": report_followed["fake_probability"]},
        "people": {"full": report_full["people"], "followed": report_followed["people"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    engine = pipeline.load_engine(ROOT / "converted_models")
    videos = [benchmark.make_video(OUT / "media" / "moving_face_20s_720p.mp4", 20.0), make_fast_video(OUT / "media" / "fast_two_faces.mp4")]
    for video in videos:
        print(json.dumps(compare(video, engine, args.frames)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

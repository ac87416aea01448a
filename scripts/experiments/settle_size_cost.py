"""Experiment (session 11): what settling each box at a fixed face size costs against settling it on
the frame MTCNN searched. On the `make bench` video (run `make bench` first: it writes
bench-output/media/moving_face_20s_720p.mp4), 100 evenly spaced frames, the face found at 640 px;
then, alternating three times, `faces.settle_boxes` on the 640 px frame (including its downscale,
as sessions 9-10 did) and `faces.settle_boxes_at_face_size` on the full-size frame (session 11).
Wall and CPU seconds per 100 faces. Run it on an idle machine.

    .venv/bin/python scripts/experiments/settle_size_cost.py --threads 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import faces  # noqa: E402
import video_processor  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--video", default=str(ROOT / "bench-output" / "media" / "moving_face_20s_720p.mp4"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = video_processor.probe_video(a.video)
    indices = video_processor.sample_frame_indices(info.frame_count, 100)
    frames = [f for _, f in video_processor.iter_frames(a.video, indices) if f is not None]
    detector = faces.get_face_detector()
    boxes = [np.array([detector.detect([f], max_side=640)[0][0].box]) for f in frames]
    onet = detector._mtcnn.onet

    def searched_frame(frame, box):
        small, scale = faces.downscaled(frame, 640)
        faces.settle_boxes(onet, small, box * scale)

    def at_face_size(frame, box):
        faces.settle_boxes_at_face_size(onet, frame, box)

    for r in range(a.rounds):
        for name, settle in (("on the 640 px frame", searched_frame), ("at 224 px, full-size frame", at_face_size)):
            wall, cpu = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                for frame, box in zip(frames, boxes):
                    settle(frame, box)
            print(f"round {r}: {name:>27}: {time.perf_counter() - wall:.3f} s wall, "
                  f"{time.process_time() - cpu:.3f} s CPU per {len(frames)} faces")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Experiment (issue 11, session 9): what settling the boxes (faces.settle_boxes) costs and changes,
with everything else equal: one process, the installed models, `FaceDetector.consensus` switched.

* cost: the benchmark's 100-frame 720p video analysed in process, settled and unsettled runs
  alternating (median of --runs each): wall, CPU and face-finding seconds;
* effect: the re-framing check of `evaluate.py --reframing` (test split, the same 40 crops) with the
  boxes as MTCNN found them; compare with `evaluate.py ... --reframing 40`, which settles them.

    .venv/bin/python scripts/experiments/settle_cost.py      # after `make bench` made the video
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402
import faces  # noqa: E402
import pipeline  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--video", default=str(ROOT / "bench-output" / "media" / "moving_face_20s_720p.mp4"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "dfdc-faces"))
    p.add_argument("--reframing", type=int, default=40)
    a = p.parse_args()
    engine = pipeline.load_engine(ROOT / "converted_models")
    detector = faces.get_face_detector()
    pipeline.analyze_video(a.video, engine, 100)   # warm-up
    runs: dict[bool, list] = {True: [], False: []}
    for _ in range(a.runs):
        for consensus in (False, True):
            detector.consensus = consensus
            c0, t0 = time.process_time(), time.perf_counter()
            analysis = pipeline.analyze_video(a.video, engine, 100)
            runs[consensus].append((time.perf_counter() - t0, time.process_time() - c0, analysis.timings["faces_s"]))
    for consensus, values in runs.items():
        wall, cpu, found = sorted(values)[len(values) // 2]
        print(f"settled={consensus}: median wall {wall:.2f} s, CPU {cpu:.2f} s, face finding {found:.2f} s")
    detector.consensus = False
    # samples=200 draws the same crops as `evaluate.py --stability --max-samples 200 --reframing 40`
    # (the first 40 of a 200-crop draw), though only the re-framing check runs.
    out = evaluate.stability_report(a.data_dir, "test", ROOT / "converted_models", None, 200, False, a.reframing)
    print("re-framing with MTCNN's boxes as found:", json.dumps(out["reframing"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Experiment (issue 11): can MTCNN's last stage (O-Net) make boxes found on 640 px frames the same
as boxes found at full resolution, so that the fast path and the naive baseline cut the same crops?

On the benchmark's 720p video (100 sampled frames), each face is found at 640 px and at full size;
the 640 px box (or both boxes) is then re-regressed by O-Net on the full-resolution frame, once or
twice, and the box IoU with the full-size box is reported. Results: docs/performance.md.

    .venv/bin/python scripts/experiments/onet_refinement.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import benchmark  # noqa: E402
import faces  # noqa: E402
from video_processor import box_iou, sample_frame_indices  # noqa: E402


def onet_refine(detector: faces.FaceDetector, image: np.ndarray, box, rounds: int = 1):
    """`box` re-regressed by O-Net on `image` (squared, cut, 48x48, O-Net, box regression), as
    facenet_pytorch's third stage does with R-Net's boxes."""
    from facenet_pytorch.models.utils.detect_face import bbreg, imresample, pad, rerec

    tensor = torch.as_tensor(image).permute(2, 0, 1).unsqueeze(0).float()
    h, w = image.shape[:2]
    boxes = torch.tensor([[*box, 1.0]], dtype=torch.float32)
    for _ in range(rounds):
        boxes = rerec(boxes.clone())
        y, ey, x, ex = pad(boxes, w, h)
        cut = imresample(tensor[:, :, (y[0] - 1):ey[0], (x[0] - 1):ex[0]], (48, 48))
        with torch.inference_mode():
            regression, _, _ = detector._mtcnn.onet((cut - 127.5) * 0.0078125)
        boxes = bbreg(boxes.clone(), regression)
    return tuple(float(v) for v in boxes[0, :4])


def main() -> int:
    video = benchmark.make_video(benchmark.OUT_DIR / "media" / "moving_face_20s_720p.mp4", 20.0)
    cap = cv2.VideoCapture(str(video))
    wanted = set(sample_frame_indices(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 100))
    frames, index = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index in wanted:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        index += 1
    detector = faces.get_face_detector()
    small, full = detector.detect(frames, max_side=640), detector.detect(frames, max_side=4096)
    ious: dict[str, list[float]] = {k: [] for k in ("as found", "640 refined once", "640 refined twice",
                                                     "both refined once", "both refined twice")}
    for image, a, b in zip(frames, small, full):
        if not a or not b:
            continue
        ours, naive = a[0].box, b[0].box
        ious["as found"].append(box_iou(ours, naive))
        ious["640 refined once"].append(box_iou(onet_refine(detector, image, ours), naive))
        ious["640 refined twice"].append(box_iou(onet_refine(detector, image, ours, 2), naive))
        ious["both refined once"].append(box_iou(onet_refine(detector, image, ours), onet_refine(detector, image, naive)))
        ious["both refined twice"].append(box_iou(onet_refine(detector, image, ours, 2),
                                                  onet_refine(detector, image, naive, 2)))
    for name, values in ious.items():
        v = np.array(values)
        print(f"{name:>20}: {len(v)} faces, box IoU min {v.min():.3f}, 5th pct {np.percentile(v, 5):.3f}, "
              f"median {np.median(v):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

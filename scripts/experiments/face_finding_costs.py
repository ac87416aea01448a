"""Where MTCNN's time goes on the benchmark video, and two ways to cut it (docs/performance.md, session 5).

    .venv/bin/python scripts/experiments/face_finding_costs.py [--video bench-output/media/moving_face_20s_720p.mp4]

On the 100 frames `make bench` analyses (downscaled to 640 px as the video path does), in chunks of 4:
1. CPU and wall seconds of MTCNN given a plain NHWC numpy batch against `faces.mtcnn_input`'s layout
   (an NHWC view of NCHW-contiguous memory), alternated, best of 2, and whether the boxes are equal;
2. seconds spent in MTCNN's area resampling (image pyramid / candidate crops) and in P-Net;
3. P-Net on one chunk's pyramid: eager PyTorch (default and channels_last weights) against ONNX Runtime.
Then, in fresh interpreters: imports, engine and face finder one after the other against
`pipeline.load_engine` (the face finder built on a thread beside the ONNX sessions), twice each.
Run it on an idle machine (`make bench` makes the video): wall-clock figures are worthless otherwise.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

START = """
import sys, threading, time
t0 = time.perf_counter()
import faces, pipeline, scoring
t1 = time.perf_counter()
if sys.argv[1] == "one after the other":
    scoring.ScoringEngine(sys.argv[2]); faces.get_face_detector()
else:
    pipeline.load_engine(sys.argv[2])
print(f"{sys.argv[1]}: imports {t1 - t0:.2f} s, then both ready after {time.perf_counter() - t1:.2f} s "
      f"({time.perf_counter() - t0:.2f} s in all)")
"""


def frames_of(video: str, n: int = 100, side: int = 640):
    import cv2
    import numpy as np

    cap = cv2.VideoCapture(video)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for i in np.linspace(0, count - 1, n).astype(int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
        ok, frame = cap.read()
        h, w = frame.shape[:2]
        scale = side / max(h, w)
        frames.append(cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), (round(w * scale), round(h * scale)),
                                 interpolation=cv2.INTER_AREA))
    return frames


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", default=str(ROOT / "bench-output/media/moving_face_20s_720p.mp4"))
    p.add_argument("--models-dir", default=str(ROOT / "converted_models"))
    a = p.parse_args(argv)
    import numpy as np
    import torch

    import faces
    from facenet_pytorch.models.utils import detect_face

    frames = frames_of(a.video)
    mtcnn = faces.get_face_detector()._mtcnn
    chunks = [frames[k:k + 4] for k in range(0, len(frames), 4)]

    def run(layout: str) -> np.ndarray:
        boxes = []
        for chunk in chunks:
            batch = faces.mtcnn_input(chunk) if layout == "contiguous" else np.stack(chunk)
            with torch.inference_mode():
                found, _, _ = mtcnn.detect(batch, landmarks=True)
            boxes += [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in found if b is not None]
        return np.concatenate(boxes)

    run("plain")                                                     # warm-up: oneDNN primitives
    best: dict[str, tuple[float, float]] = {}
    for _ in range(2):
        for layout in ("plain", "contiguous"):
            t, c = time.perf_counter(), time.process_time()
            run(layout)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            best[layout] = min(best.get(layout, (wall, cpu)), (wall, cpu))
    for layout, (wall, cpu) in best.items():
        print(f"MTCNN, {layout} NHWC batch: {wall:.2f} s wall, {cpu:.2f} s CPU per {len(frames)} frames")
    print("boxes equal:", bool(np.array_equal(run("plain"), run("contiguous"))))

    # 2. resampling and P-Net inside MTCNN (contiguous layout)
    spent = {"resampling": 0.0, "pnet": 0.0}
    resample, pnet = detect_face.interpolate, mtcnn.pnet

    def timed_resample(*args, **kwargs):
        t = time.perf_counter()
        out = resample(*args, **kwargs)
        spent["resampling"] += time.perf_counter() - t
        return out

    class TimedPNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = pnet

        def forward(self, x):
            t = time.perf_counter()
            out = self.net(x)
            spent["pnet"] += time.perf_counter() - t
            return out

    detect_face.interpolate, mtcnn.pnet = timed_resample, TimedPNet()
    try:
        t = time.perf_counter()
        run("contiguous")
        total = time.perf_counter() - t
    finally:
        detect_face.interpolate, mtcnn.pnet = resample, pnet
    print(f"inside MTCNN ({total:.2f} s wall): area resampling {spent['resampling']:.2f} s, "
          f"P-Net {spent['pnet']:.2f} s, the rest (R-Net, O-Net, NMS, Python) {total - sum(spent.values()):.2f} s")

    # 3. P-Net alone on one chunk's pyramid: eager (as facenet-pytorch builds it, and channels_last) vs ORT
    import copy

    import onnxruntime as ort
    from facenet_pytorch import MTCNN

    plain_pnet = MTCNN(device="cpu").pnet.eval()
    h, w = frames[0].shape[:2]
    scale, scales = 12 / faces.MIN_FACE_SIZE_PX, []
    while min(h, w) * scale >= 12:
        scales.append(scale)
        scale *= 0.709
    pyramid = [torch.rand(4, 3, int(h * s + 1), int(w * s + 1)) * 2 - 1 for s in scales]
    buffer = io.BytesIO()
    torch.onnx.export(plain_pnet, torch.randn(1, 3, 64, 64), buffer, input_names=["x"], output_names=["reg", "prob"],
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    nets = {"eager": plain_pnet, "eager, channels_last weights": copy.deepcopy(plain_pnet).to(memory_format=torch.channels_last)}
    runs = {name: (lambda net=net: [net(x) for x in pyramid]) for name, net in nets.items()}
    runs["ONNX Runtime"] = lambda: [session.run(None, {"x": x.numpy()}) for x in pyramid]
    with torch.inference_mode():
        for name, fn in runs.items():
            fn()
            t = time.perf_counter()
            for _ in range(10):
                fn()
            print(f"P-Net on a 4-frame pyramid, {name}: {(time.perf_counter() - t) * 100:.1f} ms")

    # Start-up: the face finder one after the other, or beside the engine (fresh interpreters).
    for mode in ("one after the other", "beside the engine") * 2:
        out = subprocess.run([sys.executable, "-c", START, mode, a.models_dir], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        print(out.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())

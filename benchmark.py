"""Benchmark: this project's analysis path against a faithful naive pipeline (`make bench`).

    .venv/bin/python benchmark.py            # full run (~20 s 720p video, 100 frames, 7 image runs)
    .venv/bin/python benchmark.py --quick    # smoke run (3 s video, 10 frames, 2 image runs)

Workloads (docs/performance.md has the figures and how they were measured):
  (a) image:      one photo with one face, end to end (decode, faces, all models, ensemble, report);
                  median of --runs runs after a warm-up.
  (b) video:      a generated 1280x720, 25 fps video (scikit-image's astronaut() face moving over a
                  background), --frames frames analysed with pipeline.analyze_video + report;
                  run in a fresh subprocess, which also reports
  (d) peak RSS:   that subprocess's peak resident memory (ru_maxrss, and VmHWM reset just before the
                  video so the figure is the video's own peak).
  (c) cold start: a fresh interpreter that imports, builds the ScoringEngine and the face detector
                  until every model is ready; timed from process start (Popen) to its "ready" line.
                  With the ONNX cache filled (the normal start) and, in the full run, empty (first start).
The naive baseline (below) runs (a) and (b) the way a straightforward script would: every frame
decoded in order, a new MTCNN per frame, detection at full resolution, every model run on one face at
a time in eager PyTorch (fp32, no channels_last), with the same box consensus
(faces.settle_boxes_at_face_size, on the full-size frame), the same crop geometry and the same calibrated ensemble. The two must agree,
or the benchmark exits with status 1 (see `compare`): the same faces in every frame; the naive's
crops scored by ours within 1e-3 of the naive's probabilities; and no systematic end-to-end
difference (mean per-face and file-score difference within --tolerance, or within 3 standard errors
where models jitter with the boxes).

Honest figures: each timing is reported as wall-clock seconds *and* CPU seconds of the process
(user + system, all threads), with the share of the machine's CPU that other processes used during
the run. On a busy machine wall times are inflated; CPU seconds are far less affected (see
docs/performance.md). Without installed models in converted_models/, random-weight models are written
to bench-output/random-models-128px/ (said so in the output): timings then hold for that size only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
OUT_DIR = ROOT / "bench-output"
RANDOM_MODEL_SIZE = 128
# Issue 12's targets (2-core machine) and issue 11's per-face agreement; `met` is printed for each.
TARGETS = {"video_s": 5.0, "video_speedup": 8.0, "cli_video_s": 8.0, "app_video_s": 8.0, "image_s": 0.2,
           "cold_start_s": 4.0, "first_start_s": 10.0, "peak_rss_mb": 1200.0, "cli_peak_rss_mb": 1200.0,
           "max_face_p_diff": 0.05}


# ---------------------------------------------------------------------------------------------------
# Measuring
def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_stat() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields[:8]) - idle, sum(fields[:8])


class Measure:
    """Wall and CPU seconds of a block, and how much of the machine other processes used meanwhile."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self.others_share: float | None = None

    def __enter__(self):
        self._stat = _proc_stat()
        self._cpu = cpu_seconds()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._t
        self.cpu = cpu_seconds() - self._cpu
        end = _proc_stat()
        if self._stat and end and end[1] > self._stat[1]:
            hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            busy = (end[0] - self._stat[0]) / hz
            capacity = (end[1] - self._stat[1]) / hz
            self.others_share = max(0.0, min(1.0, (busy - self.cpu) / capacity)) if capacity > 0 else None
        return False


def median_runs(fn, runs: int) -> dict:
    walls, cpus, others = [], [], []
    result = None
    for _ in range(runs):
        with Measure() as m:
            result = fn()
        walls.append(m.wall)
        cpus.append(m.cpu)
        if m.others_share is not None:
            others.append(m.others_share)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "runs_wall_s": walls,
            "runs_cpu_s": cpus, "others_cpu_share": statistics.mean(others) if others else None,
            "result": result}


def _r(x, nd=4):
    return None if x is None else round(float(x), nd)


# ---------------------------------------------------------------------------------------------------
# Inputs
def astronaut_face() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def make_image(path: Path) -> Path:
    from PIL import Image

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(astronaut_face()).save(path, quality=92)
    return path


def make_video(path: Path, seconds: float, fps: int = 25, size=(1280, 720)) -> Path:
    """A real face (astronaut(), 1.25x) moving slowly over a textured 1280x720 background."""
    import cv2

    width, height = size
    frames = int(round(seconds * fps))
    if path.exists():
        cap = cv2.VideoCapture(str(path))
        ok = cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == frames and \
            path.stat().st_mtime >= Path(__file__).stat().st_mtime   # remade when this recipe changes
        cap.release()
        if ok:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([90 + 60 * xx / width, 110 + 40 * yy / height, 140 - 50 * xx / width], axis=-1)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (height // 8, width // 8, 3)).astype(np.float32), (0, 0), 2)
    background = np.clip(base + cv2.resize(noise, (width, height)), 0, 255).astype(np.uint8)
    face = cv2.resize(astronaut_face()[0:320, 64:384], (400, 400), interpolation=cv2.INTER_CUBIC)
    fh, fw = face.shape[:2]
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError("cv2.VideoWriter cannot write mp4v here")
    travel = width - fw - 160
    speed = travel / (20 * fps - 1)               # ~1.4 px per frame: across the frame in 20 s, at any length
    for i in range(frames):
        x = int(round(80 + travel - abs((i * speed) % (2 * travel) - travel)))    # slowly left to right (and back)
        y = int(round((height - fh) / 2 + 40 * math.sin(2 * math.pi * i / (20 * fps))))
        frame = background.copy()
        frame[y:y + fh, x:x + fw] = face
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    os.replace(tmp, path)
    return path


def write_random_models(out_dir: Path, size: int = RANDOM_MODEL_SIZE, seed: int = 0) -> Path:
    """Random-weight converted models (deterministic: same seed, same weights, same ONNX cache key)."""
    import model_store

    return model_store.write_random_models(out_dir, size=size, seed=seed, extra={"note": "random weights (benchmark)"})


# ---------------------------------------------------------------------------------------------------
# Ours (the project's pipeline)
def outcome(report: dict) -> dict:
    """What a run produced: every face (frame, box, P(fake), per-model P) and the file's score/verdict."""
    return {"faces": [{"frame": f["frame"], "box": f["box"], "p": f["fake_probability"], "models": f["models"]}
                      for f in report["faces"]],
            "score": report["fake_probability"], "verdict": report["verdict"]}


def ours_image(path: Path, engine, fast: bool = False) -> dict:
    from pipeline import analyze_image, build_report

    analysis = analyze_image(str(path), engine, fast=fast)
    return outcome(build_report(analysis, engine))


def ours_video(path: Path, engine, frames: int, fast: bool = False) -> dict:
    from pipeline import analyze_video, build_report

    analysis = analyze_video(str(path), engine, num_frames=frames, fast=fast)
    return {**outcome(build_report(analysis, engine)), "stages_s": analysis.timings,
            "frames_searched_in_full": analysis.full_face_searches}


# ---------------------------------------------------------------------------------------------------
# The naive baseline: what a straightforward script does (kept faithful on purpose: do not optimise)
class Naive:
    def __init__(self, models_dir: Path, engine):
        from model_store import discover_manifests, load_converted_model

        self.engine = engine                       # for engine.combine (the same calibrated ensemble)
        self.models = {}
        for key, manifest in discover_manifests(models_dir).items():
            if key in engine.models:
                loaded = load_converted_model(manifest)   # its own fp32 copy, default memory format
                self.models[key] = loaded
        self.crops: list[np.ndarray] = []          # the last run's crops (for the scoring-path check)
        self.stages_s: dict[str, float] = {}       # the last run's time per stage (wall)

    def new_mtcnn(self):
        from facenet_pytorch import MTCNN

        from faces import MIN_FACE_SIZE_PX, MTCNN_THRESHOLDS
        return MTCNN(keep_all=True, device="cpu", min_face_size=MIN_FACE_SIZE_PX, thresholds=list(MTCNN_THRESHOLDS),
                     post_process=False)

    def faces_in(self, frame: np.ndarray, index: int) -> list:
        import torch

        from faces import (MAX_FACES_PER_IMAGE, MIN_FACE_PROBABILITY, Face, clip_box, crop_face,
                           settle_boxes_at_face_size)
        from pipeline import FaceRecord
        from scoring import prepare_batch

        t0 = time.perf_counter()
        mtcnn = self.new_mtcnn()                        # a new detector for every frame
        boxes, probs = mtcnn.detect(frame)              # full resolution
        found = []
        h, w = frame.shape[:2]
        if boxes is not None:
            for box, prob in zip(np.asarray(boxes).astype(np.float32), np.asarray(probs).astype(np.float32)):
                x1, y1, x2, y2 = (float(v) for v in box)
                if not np.isfinite(prob) or prob < MIN_FACE_PROBABILITY or x2 - x1 < 2 or y2 - y1 < 2:
                    continue
                found.append(Face(box=(max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)),
                                  probability=float(prob), frame=index))
        if found:   # the analysis's box consensus (faces.settle_boxes_at_face_size), on the full-size frame
            with torch.no_grad():
                settled, _ = settle_boxes_at_face_size(mtcnn.onet, frame, np.array([f.box for f in found]))
            found = [Face(box=clip_box(b, frame.shape), probability=f.probability, frame=index)
                     for f, b in zip(found, settled)]
        found.sort(key=lambda f: f.area, reverse=True)
        t1 = time.perf_counter()
        records = []
        for face in found[:MAX_FACES_PER_IMAGE]:
            crop = crop_face(frame, face.box)
            logits = {}
            for key, loaded in self.models.items():         # one face at a time, eager fp32
                x = prepare_batch([crop], loaded.input_size, loaded.manifest["mean"], loaded.manifest["std"])
                with torch.no_grad():
                    views = self.engine.views_for(key)(x) if self.engine.uses_tta(key) else [x]   # as ours, one at a time
                    z = float(np.mean([float(loaded.model(v.contiguous()).reshape(-1)[0]) for v in views]))
                logits[key] = z / loaded.temperature
            records.append(FaceRecord(face=face, crop=crop, logits=logits))
        self.stages_s["faces_s"] = self.stages_s.get("faces_s", 0.0) + t1 - t0
        self.stages_s["models_s"] = self.stages_s.get("models_s", 0.0) + time.perf_counter() - t1
        return records

    def _report(self, records: list, kind: str, indices: list[int]) -> dict:
        """The same per-face ensemble and per-file aggregation (pipeline.build_report) as ours."""
        from pipeline import Analysis, build_report
        from video_processor import assign_tracks

        by_frame = {i: [r for r in records if r.frame == i] for i in indices}
        ids = assign_tracks([[r.face.box for r in by_frame[i]] for i in indices])
        for i, tids in zip(indices, ids):
            for r, tid in zip(by_frame[i], tids):
                r.track = tid
        self.crops = [r.crop for r in records]
        analysis = Analysis(input="naive", kind=kind, faces=records, frames_analyzed=len(indices),
                            frame_indices=indices, models=list(self.models))
        return outcome(build_report(analysis, self.engine))

    def image(self, path: Path) -> dict:
        from media import load_image

        self.stages_s = {}
        return self._report(self.faces_in(load_image(str(path)), 0), "image", [0])

    def video(self, path: Path, frames: int) -> dict:
        import cv2

        from video_processor import sample_frame_indices

        self.stages_s = {}
        t0 = time.perf_counter()
        cap = cv2.VideoCapture(str(path))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = set(sample_frame_indices(total, frames))
        kept, index = [], 0
        while True:                                      # decode every frame, in order
            ok, frame = cap.read()
            if not ok:
                break
            if index in wanted:
                kept.append((index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
            index += 1
        cap.release()
        self.stages_s["decode_s"] = time.perf_counter() - t0
        records = []
        for index, frame in kept:
            records.extend(self.faces_in(frame, index))
        return self._report(records, "video", [i for i, _ in kept])


# ---------------------------------------------------------------------------------------------------
# Agreement
def fast_mode_shift(default: dict, fast: dict) -> dict:
    """|dP| of the ensemble between the default and fast mode for the same faces (same frames and
    boxes: the two runs find faces identically and differ only in how the crops are scored)."""
    by_key = {(f["frame"], tuple(f["box"])): f["p"] for f in default["faces"]}
    dps = [abs(f["p"] - by_key[(f["frame"], tuple(f["box"]))]) for f in fast["faces"]
           if f["p"] is not None and by_key.get((f["frame"], tuple(f["box"]))) is not None]
    return {"faces": len(dps), "mean": _r(float(np.mean(dps))) if dps else None,
            "max": _r(float(np.max(dps))) if dps else None}


def _iou(a, b) -> float:
    from video_processor import box_iou
    return box_iou(a, b)


def _jitter(faces: list[dict]) -> float | None:
    """Mean |P(fake)| change between a face and the same person's face in the next analysed frame."""
    ordered = sorted(faces, key=lambda f: f["frame"])
    steps = []
    for prev, cur in zip(ordered, ordered[1:]):
        if _iou(prev["box"], cur["box"]) >= 0.3:
            steps.append(abs(cur["p"] - prev["p"]))
    return float(np.mean(steps)) if steps else None


def compare(ours: dict, naive: dict, tolerance: float, engine=None, naive_crops=None,
            scoring_tolerance: float = 1e-3) -> dict:
    """Do ours and the naive pipeline agree? Three checks, all required:

    * faces: the same number of faces in every frame, each matched to one of the other's (IoU >= 0.5);
    * scoring path: the naive's own crops, scored by ours (ONNX Runtime, batched), give the naive's
      per-model and ensemble probabilities within `scoring_tolerance` (isolates the fast runtime);
    * result: no systematic difference end to end: the mean of (ours - naive) over matched faces and
      the file's score difference within max(`tolerance`, 3 standard errors of the per-face differences).
    Per-face differences end to end are reported but not required to be within `tolerance`: ours finds
    faces at 640 px, the naive at full resolution; both settle the boxes on the full-size frame, yet
    they differ by up to a pixel (median IoU 0.99, session 14), and models sensitive to framing move
    with them, as much as the naive's own P(fake) moves from one frame to the next of the same face
    (`naive_frame_to_frame_jitter`; docs/performance.md).
    """
    by_frame: dict[int, tuple[list, list]] = {}
    for f in ours["faces"]:
        by_frame.setdefault(f["frame"], ([], []))[0].append(f)
    for f in naive["faces"]:
        by_frame.setdefault(f["frame"], ([], []))[1].append(f)
    count_mismatch, unmatched, ious, p_diffs, signed_diffs, worst = [], 0, [], [], [], []
    model_diffs: dict[str, list[float]] = {}   # which member moves between the two crops of a face
    for frame, (a, b) in sorted(by_frame.items()):
        if len(a) != len(b):
            count_mismatch.append({"frame": frame, "ours": len(a), "naive": len(b)})
        pairs = sorted(((_iou(fa["box"], fb["box"]), i, j) for i, fa in enumerate(a) for j, fb in enumerate(b)),
                       reverse=True)
        used_a, used_b = set(), set()
        for iou, i, j in pairs:
            if iou < 0.5 or i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            ious.append(iou)
            p_diffs.append(abs(a[i]["p"] - b[j]["p"]))
            signed_diffs.append(a[i]["p"] - b[j]["p"])
            for key in set(a[i].get("models", {})) & set(b[j].get("models", {})):
                model_diffs.setdefault(key, []).append(abs(a[i]["models"][key] - b[j]["models"][key]))
            worst.append({"frame": frame, "iou": _r(iou), "p_ours": a[i]["p"], "p_naive": b[j]["p"],
                          "box_ours": a[i]["box"], "box_naive": b[j]["box"]})
        unmatched += (len(a) - len(used_a)) + (len(b) - len(used_b))
    faces_ok = not count_mismatch and unmatched == 0 and len(ours["faces"]) > 0

    scoring = {"checked": False}
    if engine is not None and naive_crops:
        fast = engine.score_crops(naive_crops, models=list(naive["faces"][0]["models"]))
        d_ens = np.abs(fast.ensemble_probability - np.array([f["p"] for f in naive["faces"]]))
        d_mod = max(float(np.max(np.abs(fast.model_probabilities[k] - np.array([f["models"][k] for f in naive["faces"]]))))
                    for k in fast.models_used)
        # The naive's probabilities are rounded to 1e-4 in its report: allow for that.
        scoring = {"checked": True, "tolerance": scoring_tolerance, "max_ensemble_p_diff": _r(float(d_ens.max()), 6),
                   "max_model_p_diff": _r(d_mod, 6),
                   "passed": bool(d_ens.max() <= scoring_tolerance + 1e-4 and d_mod <= scoring_tolerance + 1e-4)}
    # End to end, per face, the two differ by box jitter (see above); what must hold is that ours is
    # not *systematically* different: the mean per-face difference, and the file's score, within
    # `tolerance` or within 3 standard errors of the per-face differences, whichever is larger.
    signed = np.array(signed_diffs, dtype=np.float64)
    se = float(signed.std(ddof=1) / math.sqrt(len(signed))) if len(signed) > 1 else 0.0
    bound = max(tolerance, 3.0 * se)
    mean_diff = float(signed.mean()) if len(signed) else 0.0
    score_diff = (abs(ours["score"] - naive["score"]) if ours["score"] is not None and naive["score"] is not None
                  else (0.0 if ours["score"] == naive["score"] else float("inf")))
    result_ok = abs(mean_diff) <= bound and score_diff <= bound
    passed = faces_ok and result_ok and scoring.get("passed", True)
    worst.sort(key=lambda w: -abs(w["p_ours"] - w["p_naive"]))
    return {"passed": passed, "faces_ok": faces_ok, "result_ok": result_ok, "tolerance": tolerance,
            "faces_ours": len(ours["faces"]), "faces_naive": len(naive["faces"]),
            "frames_with_count_mismatch": count_mismatch[:10], "unmatched_faces": unmatched,
            "score_ours": ours["score"], "score_naive": naive["score"], "score_diff": _r(score_diff, 6),
            "mean_face_p_diff": _r(mean_diff, 6), "bound": _r(bound, 6),
            "verdict_ours": ours["verdict"], "verdict_naive": naive["verdict"],
            "scoring_path": scoring,
            "min_box_iou": _r(min(ious)) if ious else None, "median_box_iou": _r(np.median(ious)) if ious else None,
            "per_face_p_diff": {"max": _r(max(p_diffs), 6) if p_diffs else None,
                                "p90": _r(np.quantile(p_diffs, 0.9), 6) if p_diffs else None,
                                "mean": _r(np.mean(p_diffs), 6) if p_diffs else None,
                                "share_within_tolerance": _r(np.mean(np.array(p_diffs) <= tolerance), 3) if p_diffs else None},
            "per_model_face_p_diff": {k: {"max": _r(max(v), 6), "mean": _r(np.mean(v), 6)}
                                      for k, v in sorted(model_diffs.items())},
            "naive_frame_to_frame_jitter": _r(_jitter(naive["faces"]), 6),
            "ours_frame_to_frame_jitter": _r(_jitter(ours["faces"]), 6),
            "worst_faces": worst[:5]}


# ---------------------------------------------------------------------------------------------------
# Child processes (cold start; video + peak RSS)
def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child_main(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t_import = time.perf_counter()
    from faces import get_face_detector
    from pipeline import load_engine
    import_s = time.perf_counter() - t_import
    t = time.perf_counter()
    engine = load_engine(args.models_dir)         # the face finder is built beside the engine, as in the CLI
    engine_s = time.perf_counter() - t
    t = time.perf_counter()
    get_face_detector()                           # ready by now: only checks that it was built
    detector_s = time.perf_counter() - t
    runtimes = {k: getattr(r, "runtime", "torch") for k, r in engine.runners.items()}
    info = {"import_s": import_s, "engine_s": engine_s, "detector_s": detector_s, "cpu_s": cpu_seconds(),
            "runtimes": runtimes, "models": engine.loaded_keys,
            "exported": sorted(k for k, r in engine.runners.items() if getattr(r, "exported", False))}
    if args.child == "cold":
        print("READY " + json.dumps(info), flush=True)
        return 0
    # video + peak RSS: warm up on the image, reset the high-water mark, then analyse the video.
    ours_image(Path(args.image), engine)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reset = _reset_peak_rss()
    runs = median_runs(lambda: ours_video(Path(args.video), engine, args.frames), args.video_runs)
    info.update({"video": {k: v for k, v in runs.items() if k != "result"}, "outcome": runs["result"],
                 "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                 "peak_rss_before_video_mb": rss_before,
                 "peak_rss_during_video_mb": _vm_hwm_mb() if reset else None})
    # Fast mode (one view per face), after the peak is read: it needs less memory, not more.
    fast = median_runs(lambda: ours_video(Path(args.video), engine, args.frames, fast=True), args.video_runs)
    info.update({"video_fast": {k: v for k, v in fast.items() if k != "result"}, "outcome_fast": fast["result"]})
    print("RESULT " + json.dumps(info), flush=True)
    return 0


def app_child(args) -> int:
    """The Streamlit app driven headless (streamlit.testing AppTest, in this fresh process): the first
    page (the app builds the engine), then a video upload at --frames frames until the verdict shows.
    Rendering is included; the browser's upload transfer is not."""
    os.environ["DFSTUDIO_MODELS_DIR"] = str(args.models_dir)
    os.environ["DFSTUDIO_TEST_HOOKS"] = "1"          # the app's test-only input hook, if the uploader cannot be set
    from streamlit.testing.v1 import AppTest

    t0 = time.perf_counter()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    page_s = time.perf_counter() - t0
    at.radio(key="mode").set_value("Video").run()
    at.slider(key="frames").set_value(args.frames).run()
    video = Path(args.video)
    t1 = time.perf_counter()
    uploaders = getattr(at, "file_uploader", None)
    if uploaders is not None and len(uploaders) and hasattr(uploaders[0], "set_value"):
        uploaders[0].set_value((video.name, video.read_bytes(), "video/mp4"))
    else:
        at.session_state["test_input_path"] = str(video)
    at.run()
    verdict_s = time.perf_counter() - t1
    verdicts = [m.value for m in at.metric if m.label == "Verdict"]
    if at.exception or not verdicts:
        raise RuntimeError(f"the app gave no verdict: {[e.value for e in at.exception]}")
    print("RESULT " + json.dumps({"first_page_s": page_s, "upload_to_verdict_s": verdict_s, "verdict": verdicts[0],
                                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
    return 0


def cli_cold_video(video: Path, models_dir: Path, frames: int, threads: int) -> dict:
    """`predict.py VIDEO --frames N --json` as a user runs it: a fresh process, timed from outside,
    with its peak RSS (from wait4's rusage of that process alone)."""
    cmd = [sys.executable, str(ROOT / "predict.py"), str(video), "--frames", str(frames), "--json",
           "--models-dir", str(models_dir)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=str(ROOT))
        # Reaped here, not by Popen: wait4 gives this child's own rusage (ru_maxrss in KiB on Linux).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"predict.py failed (exit {proc.returncode}):\n{stderr.decode()[-2000:]}")
    report = json.loads(stdout)
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "command": f"python predict.py {video.name} --frames {frames} --json --models-dir {models_dir}",
            "faces": len(report.get("faces", [])), "verdict": report.get("verdict")}


def run_child(kind: str, args, models_dir: Path, extra_env: dict | None = None, extra_args=()) -> tuple[dict, float]:
    """Run a child; returns (its JSON, wall seconds from Popen to its READY/RESULT line)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--models-dir", str(models_dir),
           "--threads", str(args.threads or 0), *extra_args]
    env = {**os.environ, **(extra_env or {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    marker = "READY " if kind == "cold" else "RESULT "
    payload, wall = None, None
    for line in proc.stdout:
        if line.startswith(marker):
            wall = time.perf_counter() - t0
            payload = json.loads(line[len(marker):])
    stderr = proc.stderr.read()
    proc.wait()
    if proc.returncode != 0 or payload is None:
        raise RuntimeError(f"benchmark child {kind!r} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    return payload, wall


# ---------------------------------------------------------------------------------------------------
def detection_sweep(video: Path, frames: int, sides=(1280, 640, 480)) -> dict:
    """MTCNN's full search: cost per frame and faces found at several detection sizes (one frame a call,
    as the pipeline searches; following faces between frames is not used here)."""
    from faces import get_face_detector
    from video_processor import probe_video, read_frames, sample_frame_indices

    info = probe_video(str(video))
    decoded = read_frames(str(video), sample_frame_indices(info.frame_count, frames))
    items = sorted(decoded.items())
    detector = get_face_detector()
    out, reference = {}, None
    for side in sides:
        found: list = []
        with Measure() as m:
            for index, frame in items:
                found.extend(detector.detect([frame], frame_indices=[index], max_side=side))
        counts = [len(f) for f in found]
        row = {"wall_ms_per_frame": _r(1000 * m.wall / len(items), 1), "cpu_ms_per_frame": _r(1000 * m.cpu / len(items), 1),
               "faces": sum(counts)}
        if reference is None:
            reference = found
        else:
            same = sum(len(a) == len(b) for a, b in zip(found, reference))
            ious = [_iou(a[0].box, b[0].box) for a, b in zip(found, reference) if a and b]
            row.update(frames_with_same_face_count=f"{same}/{len(items)}",
                       min_iou_vs_first=_r(min(ious)) if ious else None)
        out[str(side)] = row
    return out


def prepare_models(args) -> tuple[Path, str]:
    from model_store import DEFAULT_MODELS_DIR, discover_manifests

    if args.models_dir and not args.random_models:
        return Path(args.models_dir), "given"
    if not args.random_models and discover_manifests(DEFAULT_MODELS_DIR):
        return DEFAULT_MODELS_DIR, "installed"
    # Kept between runs (bench-output/ is ignored by git): same weights, so the ONNX cache is reused.
    folder = OUT_DIR / f"random-models-{args.random_size}px"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if len(discover_manifests(folder)) < 5 or not (folder / "ensemble.json").exists():
        tmp = Path(tempfile.mkdtemp(prefix=".random-models-", dir=OUT_DIR))
        write_random_models(tmp, size=args.random_size)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    why = "--random-models" if args.random_models else "no installed models in converted_models/"
    return folder, f"RANDOM WEIGHTS at {args.random_size} px ({why}): timings hold for that input size only"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (3 s video, 10 frames, 2 runs)")
    parser.add_argument("--runs", type=int, default=None, help="timed image runs (median; default 7, quick 2)")
    parser.add_argument("--video-runs", type=int, default=None, help="timed video runs of ours (default 3, quick 1)")
    parser.add_argument("--frames", type=int, default=None, help="frames analysed (default 100, quick 10)")
    parser.add_argument("--video-seconds", type=float, default=None, help="video length (default 20, quick 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch/ONNX threads (default: torch's default)")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="end-to-end tolerance on P(fake): mean per-face and file-score difference (see compare)")
    parser.add_argument("--models-dir", default=None, help="converted models (default: converted_models/)")
    parser.add_argument("--random-models", action="store_true", help="use random-weight models even if installed")
    parser.add_argument("--random-size", type=int, default=RANDOM_MODEL_SIZE)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline (no ratios)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the MTCNN detection-size sweep")
    parser.add_argument("--out", default=str(OUT_DIR / "benchmark.json"))
    parser.add_argument("--media-dir", default=str(OUT_DIR / "media"), help="where the test image/video are made")
    parser.add_argument("--child", choices=["cold", "video", "app"], help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--video", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    q = args.quick
    args.runs = args.runs or (2 if q else 7)
    args.video_runs = args.video_runs or (1 if q else 3)
    args.frames = args.frames or (10 if q else 100)
    args.video_seconds = args.video_seconds or (3.0 if q else 20.0)
    if args.child:
        return app_child(args) if args.child == "app" else child_main(args)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    out_path = Path(args.out)
    media_dir = Path(args.media_dir)
    print(f"deepfake-studio benchmark ({'quick' if q else 'full'}) on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {threads} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    models_dir, models_source = prepare_models(args)
    print(f"models: {models_source} ({models_dir})", flush=True)
    image = make_image(media_dir / "astronaut.jpg")
    t = time.perf_counter()
    video = make_video(media_dir / f"moving_face_{args.video_seconds:g}s_720p.mp4", args.video_seconds)
    print(f"video: {video} ({time.perf_counter() - t:.1f} s to make or check)", flush=True)

    from pipeline import load_engine

    results: dict = {"command": " ".join([Path(sys.executable).name, "benchmark.py", *(argv or sys.argv[1:])]),
                     "mode": "quick" if q else "full", "models": models_source, "models_dir": str(models_dir),
                     "machine": {"cores": os.cpu_count(), "threads": threads, "processor": platform.processor(),
                                 "python": platform.python_version(), "torch": torch.__version__,
                                 "load_average_start": list(os.getloadavg())},
                     "workloads": {"image": str(image), "video": str(video),
                                   "video_seconds": args.video_seconds, "video_size": "1280x720", "fps": 25,
                                   "frames_analysed": args.frames, "image_runs": args.runs,
                                   "video_runs_ours": args.video_runs, "video_runs_naive": 1}}
    figures: dict = {}

    # Engine in this process (fills the ONNX cache, so the cold start below finds it).
    with Measure() as m:
        engine = load_engine(models_dir)
    runtimes = {k: getattr(r, "runtime", "torch") for k, r in engine.runners.items()}
    print(f"engine ready in {m.wall:.1f} s (runtimes: {runtimes})", flush=True)
    results["runtimes"] = runtimes

    # (a) image, ours
    ours_image(image, engine)                                     # warm-up
    img = median_runs(lambda: ours_image(image, engine), args.runs)
    figures.update(image_s=img["wall_s"], image_cpu_s=img["cpu_s"])
    results["image_ours"] = {k: v for k, v in img.items() if k != "result"}
    print(f"(a) image, ours:  {img['wall_s']:.3f} s wall, {img['cpu_s']:.3f} s CPU (median of {args.runs})", flush=True)
    ours_image(image, engine, fast=True)                          # warm-up
    img_fast = median_runs(lambda: ours_image(image, engine, fast=True), args.runs)
    figures.update(image_fast_s=img_fast["wall_s"])
    results["image_ours_fast"] = {k: v for k, v in img_fast.items() if k != "result"}
    print(f"    fast mode:    {img_fast['wall_s']:.3f} s wall, {img_fast['cpu_s']:.3f} s CPU", flush=True)

    # (c) cold start (child processes)
    cold, wall = run_child("cold", args, models_dir)
    figures.update(cold_start_s=wall)
    results["cold_start"] = cold
    print(f"(c) cold start:   {wall:.2f} s wall (imports {cold['import_s']:.2f}, engine and face finder "
          f"{cold['engine_s']:.2f}, then detector {cold['detector_s']:.2f}; {cold['cpu_s']:.2f} s CPU)", flush=True)
    if not q:
        with tempfile.TemporaryDirectory(prefix="dfstudio-onnx-") as empty_cache:
            first, wall = run_child("cold", args, models_dir, extra_env={"DFSTUDIO_ONNX_CACHE": empty_cache})
        figures.update(first_start_s=wall)
        results["first_start"] = first
        print(f"    first start (empty ONNX cache, exports {len(first['exported'])} models): {wall:.2f} s", flush=True)

    # (b) + (d) video in a fresh process
    vid, wall = run_child("video", args, models_dir,
                          extra_args=["--image", str(image), "--video", str(video), "--frames", str(args.frames),
                                      "--video-runs", str(args.video_runs)])
    figures.update(video_s=vid["video"]["wall_s"], video_cpu_s=vid["video"]["cpu_s"],
                   peak_rss_mb=vid["peak_rss_mb"], peak_rss_during_video_mb=vid["peak_rss_during_video_mb"])
    results["video_ours"] = {**{k: v for k, v in vid.items() if k != "outcome"},
                             "stages_s (last run)": vid["outcome"].get("stages_s")}
    print(f"(b) video, ours:  {vid['video']['wall_s']:.2f} s wall, {vid['video']['cpu_s']:.2f} s CPU "
          f"({len(vid['outcome']['faces'])} faces in {args.frames} frames; median of {args.video_runs}; last run: "
          + ", ".join(f"{k} {v:.2f}" for k, v in (vid["outcome"].get("stages_s") or {}).items()) + ")", flush=True)
    fast_dp = fast_mode_shift(vid["outcome"], vid["outcome_fast"])
    figures.update(video_fast_s=vid["video_fast"]["wall_s"], fast_mode_max_dp=fast_dp["max"])
    results["video_ours_fast"] = {**vid["video_fast"], "ensemble_dp_vs_default": fast_dp}
    print(f"    fast mode:    {vid['video_fast']['wall_s']:.2f} s wall; its faces' ensemble P(fake) differs from "
          f"the default's by {fast_dp['mean']:.3f} on average, {fast_dp['max']:.3f} at most "
          f"({fast_dp['faces']} faces)", flush=True)
    print(f"(d) peak RSS:     {vid['peak_rss_mb']:.0f} MB (process), "
          f"{vid['peak_rss_during_video_mb'] or float('nan'):.0f} MB during the video", flush=True)

    # (e) the CLI on the same video, a cold process as a user runs it; (f) the app, upload to verdict
    cli = cli_cold_video(video, models_dir, args.frames, args.threads)
    figures.update(cli_video_s=cli["wall_s"], cli_peak_rss_mb=cli["peak_rss_mb"])
    results["cli_video"] = cli
    print(f"(e) CLI, cold:    {cli['wall_s']:.2f} s wall, {cli['cpu_s']:.2f} s CPU, peak RSS {cli['peak_rss_mb']:.0f} MB "
          f"({cli['command']})", flush=True)
    if not q:
        app, _ = run_child("app", args, models_dir, extra_args=["--video", str(video), "--frames", str(args.frames)])
        figures.update(app_video_s=app["upload_to_verdict_s"])
        results["app_video"] = app
        print(f"(f) app:          upload to verdict {app['upload_to_verdict_s']:.2f} s (first page, engine included, "
              f"{app['first_page_s']:.2f} s; Streamlit AppTest in a fresh process)", flush=True)

    ok = True
    if not args.no_naive:
        naive = Naive(models_dir, engine)
        naive.image(image)                                        # warm-up
        nimg = median_runs(lambda: naive.image(image), args.runs)
        image_crops = naive.crops
        figures.update(naive_image_s=nimg["wall_s"], naive_image_cpu_s=nimg["cpu_s"])
        results["image_naive"] = {k: v for k, v in nimg.items() if k != "result"}
        print(f"(a) image, naive: {nimg['wall_s']:.3f} s wall, {nimg['cpu_s']:.3f} s CPU", flush=True)
        nvid = median_runs(lambda: naive.video(video, args.frames), 1)
        video_crops = naive.crops
        figures.update(naive_video_s=nvid["wall_s"], naive_video_cpu_s=nvid["cpu_s"])
        results["video_naive"] = {**{k: v for k, v in nvid.items() if k != "result"}, "stages_s": dict(naive.stages_s)}
        print(f"(b) video, naive: {nvid['wall_s']:.2f} s wall, {nvid['cpu_s']:.2f} s CPU ("
              + ", ".join(f"{k} {v:.2f}" for k, v in naive.stages_s.items()) + ")", flush=True)
        figures.update(image_speedup=nimg["wall_s"] / img["wall_s"], image_speedup_cpu=nimg["cpu_s"] / img["cpu_s"],
                       video_speedup=nvid["wall_s"] / figures["video_s"],
                       video_speedup_cpu=nvid["cpu_s"] / figures["video_cpu_s"])
        agree_img = compare(img["result"], nimg["result"], args.tolerance, engine, image_crops)
        agree_vid = compare(vid["outcome"], nvid["result"], args.tolerance, engine, video_crops)
        results["agreement"] = {"image": agree_img, "video": agree_vid,
                                "passed": agree_img["passed"] and agree_vid["passed"]}
        results["faces"] = {"image_ours": img["result"], "image_naive": nimg["result"],
                            "video_ours": vid["outcome"], "video_naive": nvid["result"]}
        ok = results["agreement"]["passed"]
        figures["max_face_p_diff"] = max((a["per_face_p_diff"]["max"] for a in (agree_img, agree_vid)
                                          if a["per_face_p_diff"]["max"] is not None), default=None)
        print(f"naive/ours: image {figures['image_speedup']:.1f}x wall ({figures['image_speedup_cpu']:.1f}x CPU), "
              f"video {figures['video_speedup']:.1f}x wall ({figures['video_speedup_cpu']:.1f}x CPU)", flush=True)
        for name, a in (("image", agree_img), ("video", agree_vid)):
            sp = a["scoring_path"]
            print(f"agreement {name}: {'OK' if a['passed'] else 'FAILED'}\n"
                  f"  faces:   {a['faces_ours']} vs {a['faces_naive']}, frames with another count "
                  f"{len(a['frames_with_count_mismatch'])}, unmatched {a['unmatched_faces']}, box IoU min "
                  f"{a['min_box_iou']} median {a['median_box_iou']}\n"
                  f"  scoring: the naive's crops through ours: max |dP| {sp.get('max_ensemble_p_diff')} (ensemble), "
                  f"{sp.get('max_model_p_diff')} (models); tolerance {sp.get('tolerance')}\n"
                  f"  result:  score {a['score_ours']} vs {a['score_naive']} ({a['verdict_ours']} vs "
                  f"{a['verdict_naive']}), |d| {a['score_diff']}; mean per-face d {a['mean_face_p_diff']}; "
                  f"bound {a['bound']}\n"
                  f"  per face (reported): max |dP| {a['per_face_p_diff']['max']}, mean {a['per_face_p_diff']['mean']}; "
                  f"naive's own frame-to-frame change {a['naive_frame_to_frame_jitter']}\n"
                  f"  per face, by model (max / mean |dP|): "
                  + ", ".join(f"{k} {v['max']} / {v['mean']}" for k, v in a["per_model_face_p_diff"].items()),
                  flush=True)

    if not q and not args.no_sweep:
        results["detection_sweep"] = detection_sweep(video, args.frames)
        for side, row in results["detection_sweep"].items():
            print(f"MTCNN at {side:>4} px: {row}", flush=True)

    results["machine"]["load_average_end"] = list(os.getloadavg())
    timed = [img, vid["video"]] + ([nimg, nvid] if not args.no_naive else [])
    shares = [t.get("others_cpu_share") for t in timed if t.get("others_cpu_share") is not None]
    busy = max(shares) if shares else None
    results["machine"]["others_cpu_share"] = busy
    if busy is not None and busy > 0.05:
        results["machine"]["warning"] = (f"other processes used {busy:.0%} of the machine's CPU during the runs: wall "
                                         f"times are inflated; compare the CPU-second figures, rerun on an idle machine")
        print("WARNING: " + results["machine"]["warning"], flush=True)
    figures = {k: (_r(v) if isinstance(v, float) else v) for k, v in figures.items()}
    results["figures"] = figures
    results["targets"] = {k: {"target": v, "value": figures.get(k),
                              "met": (figures.get(k) is not None and
                                      (figures[k] >= v if k.endswith("speedup") else figures[k] <= v))}
                          for k, v in TARGETS.items()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out_path}")
    for k, t in results["targets"].items():
        print(f"  target {k}: {t['value']} vs {t['target']} -> {'met' if t['met'] else 'NOT met'}")
    if not ok:
        print("FAILED: ours and the naive baseline disagree (see 'agreement' in the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

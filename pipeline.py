"""Plain analysis functions shared by the CLI, the app, the benchmark and the tests.

    load_engine(models_dir)       -> the ScoringEngine, with the face finder built beside it
    analyze_image / analyze_video -> Analysis (faces, crops, per-model calibrated logits)
    build_report(analysis, engine, threshold, models) -> the JSON-ready verdict (predict.py --json schema)
    face_table(report)                                -> one row per face (the app's CSV download)

The expensive part (decode, find faces, run the models) happens once in `analyze_*`; moving the
threshold or switching models only re-runs `build_report`, which is cheap and pure.

Aggregation (also in README): a face's score is the ensemble's P(fake). An image's score is its most
suspicious face's. In a video, faces are tracked across frames; each track (person) scores the mean
of its faces' scores, and the video scores its most suspicious person among the tracks that count:
those seen in at least a fifth of the frames with faces, so a one-frame false detection neither
decides a video nor adds a person (`persons[].counted` and `.why` say so; `people` counts them).
"""
from __future__ import annotations

import gc
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from faces import CANONICAL_CROP_SIZE, Face, crop_face, get_face_detector
from media import (ADVISORY_FACES_PER_TRACK, FOLLOW_MAX_GAP_S, FULL_SEARCH_EVERY, MAX_VIDEO_FRAMES_ANALYSED,
                   MIN_VIDEO_FRAMES_ANALYSED, MediaError, kind_of, load_image)
from process_wide import heavy_imports, release_free_memory
from scoring import ScoringEngine, sigmoid, verdict
from video_processor import assign_tracks, iter_frames, probe_video, sample_frame_indices

VIDEO_DETECTION_MAX_SIDE = 640   # video frames are searched for faces at this size (see README, perf)
MIN_TRACK_SHARE = 0.2
# Fast mode (CLI --fast, the API's `fast` field, the app's switch): the voters score each face once
# instead of averaging four or eight views (scoring.views_of). The figures are measured (README, "Fast mode").
FAST_MODE_NOTE = ("fast mode: each face was scored once, not four or eight ways; the scores move more with how "
                  "the face is framed (README, 'Fast mode')")
# The verdict of a face (or frame) none of the chosen models scored: only when the chosen models are
# all advisory and the analysis scored them on a sample (the app switches models after the analysis).
NOT_SCORED = "NOT_SCORED"

log = logging.getLogger(__name__)


def load_engine(models_dir, **engine_options) -> ScoringEngine:
    """The scoring engine, with the process-wide face finder built at the same time.

    Building MTCNN imports torchvision and facenet-pytorch (~1.4 s of Python, mostly torch._dynamo
    that torchvision.ops pulls in); ONNX Runtime creates its sessions largely outside the GIL, so the
    two overlap on a thread: 4.15 -> 3.60 s from a fresh interpreter to both ready (docs/performance.md).
    The CLI, the app and the API all start this way. A face finder that fails to build is not an
    error here: the first analysis builds it again and reports the failure where it matters.
    """
    def build_face_finder() -> None:
        try:
            with heavy_imports:  # torchvision and facenet-pytorch: see process_wide.heavy_imports
                get_face_detector()
        except Exception:  # noqa: BLE001 - retried (and raised) by the first analysis
            log.debug("face finder warm-up failed", exc_info=True)

    warm_up = threading.Thread(target=build_face_finder, name="face-finder-warm-up", daemon=True)
    warm_up.start()
    try:
        return ScoringEngine(models_dir, **engine_options)
    finally:
        warm_up.join()
        # What exists now (torch, timm, torchvision and their ~10^6 objects, the engine) lives as long
        # as the process: freeze it out of the cyclic garbage collector's reach. Its full collections
        # then skip it, and so does the interpreter's exit, which took 0.75 s after these imports and
        # 0.17 s with them frozen (docs/performance.md); reference counting frees as before.
        gc.freeze()


# progress(stage, done, total): what the analysis is doing, for a progress bar (the app's, the API's).
ProgressFn = Callable[[str, int, int], None]


@dataclass
class FaceRecord:
    face: Face
    crop: np.ndarray                       # canonical 224 px crop (uint8 RGB)
    logits: dict[str, float] = field(default_factory=dict)  # calibrated, per model
    track: int = 0

    @property
    def frame(self) -> int:
        return self.face.frame


@dataclass
class Analysis:
    input: str
    kind: str                               # "image" | "video"
    faces: list[FaceRecord]
    frames_analyzed: int
    frame_indices: list[int]
    frames_failed: list[int] = field(default_factory=list)
    width: int = 0
    height: int = 0
    fps: float | None = None
    frame_count: int | None = None
    image: np.ndarray | None = None         # the decoded image (image mode only)
    models: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    full_face_searches: int | None = None    # video: frames searched in full (the rest followed faces)
    fast: bool = False                       # the voters scored each face once (FAST_MODE_NOTE)

    @property
    def frames_with_faces(self) -> int:
        return len({f.frame for f in self.faces})


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


def advisory_sample(tracks: list[int], per_track: int) -> list[int]:
    """Indices of the faces an advisory member scores: of each track's faces (given in order, by
    their track ids) at most `per_track`, spread evenly from its first face to its last."""
    by_track: dict[int, list[int]] = {}
    for i, track in enumerate(tracks):
        by_track.setdefault(track, []).append(i)
    chosen: list[int] = []
    for members in by_track.values():
        if len(members) <= per_track:
            chosen.extend(members)
        else:
            picks = np.unique(np.round(np.linspace(0, len(members) - 1, per_track)).astype(int))
            chosen.extend(members[p] for p in picks)
    return sorted(chosen)


def _score_records(records: list[FaceRecord], engine: ScoringEngine, models, progress: ProgressFn,
                   advisory_per_track: int | None = None, fast: bool = False) -> tuple[list[str], list[str]]:
    """Score `records` with the chosen models (`fast`: one view per face, ScoringEngine.model_logits);
    returns (keys, the advisory keys that scored only a sample, `advisory_sample`): only when some
    chosen member votes, so every face's ensemble stays complete."""
    keys = [k for k in engine.loaded_keys if not models or k in models]  # registry order
    advisory = set(engine.advisory_keys) & set(keys)
    subset = None
    if advisory_per_track and advisory and advisory != set(keys):
        subset = advisory_sample([r.track for r in records], advisory_per_track)
        if len(subset) == len(records):
            subset = None
    for n, key in enumerate(keys):
        progress(f"scoring faces with {key}", n, len(keys))
        chosen = [records[i] for i in subset] if subset is not None and key in advisory else records
        if chosen:
            logits = engine.model_logits(key, [r.crop for r in chosen], fast=fast)
            for r, z in zip(chosen, logits):
                r.logits[key] = float(z)
    progress("scoring faces", len(keys), len(keys))
    return keys, [k for k in keys if k in advisory] if subset is not None else []


def analyze_image(source, engine: ScoringEngine, name: str | None = None, models=None,
                  progress: ProgressFn = _no_progress, fast: bool = False) -> Analysis:
    """Find and score every face in one image (path or bytes); `fast`: see FAST_MODE_NOTE."""
    engine.require_models()
    t0 = time.perf_counter()
    label = name or (source if isinstance(source, str) else "upload")
    image = load_image(source, name=label)
    t1 = time.perf_counter()
    progress("finding faces", 0, 1)
    faces = get_face_detector().detect([image])[0]
    t2 = time.perf_counter()
    records = [FaceRecord(face=f, crop=crop_face(image, f.box, CANONICAL_CROP_SIZE), track=i)
               for i, f in enumerate(faces)]
    keys, _ = _score_records(records, engine, models, progress, fast=fast)   # one track per face: nothing sampled
    t3 = time.perf_counter()
    return Analysis(input=str(label), kind="image", faces=records, frames_analyzed=1, frame_indices=[0],
                    width=image.shape[1], height=image.shape[0], image=image, models=keys, fast=fast,
                    timings={"decode_s": t1 - t0, "faces_s": t2 - t1, "models_s": t3 - t2})


def analyze_video(path: str, engine: ScoringEngine, num_frames: int = 32, models=None,
                  progress: ProgressFn = _no_progress, name: str | None = None,
                  detection_max_side: int = VIDEO_DETECTION_MAX_SIDE,
                  advisory_faces_per_track: int | None = ADVISORY_FACES_PER_TRACK,
                  follow_faces: bool = True, fast: bool = False) -> Analysis:
    """Sample `num_frames` evenly, decode only those, find faces, track, score in batches
    (advisory members: `advisory_faces_per_track` faces per person at most; 0 or None: every face;
    `fast`: see FAST_MODE_NOTE).

    `follow_faces`: where analysed frames are close (see `search_in_full`), a frame's faces are found
    from the previous frame's with MTCNN's last two stages instead of its full search
    (faces.FaceDetector.follow); False searches every frame in full."""
    engine.require_models()
    num_frames = int(min(max(num_frames, MIN_VIDEO_FRAMES_ANALYSED), MAX_VIDEO_FRAMES_ANALYSED))
    t0 = time.perf_counter()
    progress("reading video", 0, 1)
    info = probe_video(path)
    indices = sample_frame_indices(info.frame_count, num_frames)
    detector = get_face_detector()
    records: list[FaceRecord] = []
    failed: list[int] = []
    faces_per_frame: list[list[Face]] = []
    t_detect, full_searches = 0.0, 0
    previous: tuple[int, list[Face]] | None = None      # the last analysed frame's index and faces
    since_full = 0                                       # analysed frames since the last full search

    for index, frame in iter_frames(path, indices):
        if frame is None:
            failed.append(index)
            continue
        ts = time.perf_counter()
        faces = None
        if follow_faces and not search_in_full(previous, index, info.fps, since_full):
            faces = detector.follow(frame, previous[1], frame_index=index, max_side=detection_max_side)
        if faces is None:   # searched in full: nothing to follow, too far apart, due, or a face lost
            faces = detector.detect([frame], frame_indices=[index], max_side=detection_max_side)[0]
            full_searches, since_full = full_searches + 1, 0
        else:
            since_full += 1
        t_detect += time.perf_counter() - ts
        faces_per_frame.append(faces)
        records.extend(FaceRecord(face=f, crop=crop_face(frame, f.box)) for f in faces)
        previous = (index, faces)
        progress("decoding frames and finding faces", len(faces_per_frame) + len(failed), len(indices))
    decoded = len(faces_per_frame)
    if decoded == 0:
        raise MediaError(f"{name or path}: none of the {len(indices)} sampled frames could be decoded")
    t1 = time.perf_counter()
    # Tracks: per analysed frame (with or without faces), the boxes in order of records.
    track_ids = assign_tracks([[f.box for f in faces] for faces in faces_per_frame])
    flat = [tid for ids in track_ids for tid in ids]
    for r, tid in zip(records, flat):
        r.track = tid
    release_free_memory()   # before scoring too: MTCNN's freed temporaries would otherwise add to the peak
    keys, sampled = _score_records(records, engine, models, progress, advisory_faces_per_track, fast)
    t2 = time.perf_counter()
    release_free_memory()   # what decoding and MTCNN freed: RSS does not creep up video after video
    notes = []
    if sampled:
        scored = sum(sampled[0] in r.logits for r in records)
        notes.append(f"advisory detectors ({', '.join(sampled)}) scored {scored} of the {len(records)} faces: "
                     f"at most {advisory_faces_per_track} per person, spread over the video; they do not "
                     f"vote in the ensemble")
    if failed:
        notes.append(f"{len(failed)} of {len(indices)} sampled frames could not be decoded "
                     f"(the header may overstate the frame count)")
    return Analysis(input=str(name or path), kind="video", faces=records, frames_analyzed=decoded,
                    frame_indices=[i for i in indices if i not in set(failed)], frames_failed=failed,
                    width=info.width, height=info.height, fps=info.fps or None, frame_count=info.frame_count,
                    models=keys, notes=notes, fast=fast,
                    timings={"decode_and_faces_s": t1 - t0, "faces_s": t_detect, "models_s": t2 - t1},
                    full_face_searches=full_searches)


def search_in_full(previous: tuple[int, list[Face]] | None, index: int, fps: float, since_full: int) -> bool:
    """Whether frame `index` needs MTCNN's full search rather than following the previous frame's faces:
    when the previous analysed frame had no faces (nothing to follow), lies more than
    media.FOLLOW_MAX_GAP_S before it (or the frame rate is unknown), or FULL_SEARCH_EVERY - 1 frames
    were followed since the last full search (so faces that enter the picture are found)."""
    if previous is None or not previous[1] or not fps or fps <= 0:
        return True
    if (index - previous[0]) / fps > FOLLOW_MAX_GAP_S:
        return True
    return since_full >= FULL_SEARCH_EVERY - 1


def analyze_path(path: str, engine: ScoringEngine, num_frames: int = 32, models=None,
                 progress: ProgressFn = _no_progress, name: str | None = None,
                 advisory_faces_per_track: int | None = ADVISORY_FACES_PER_TRACK,
                 follow_faces: bool = True, fast: bool = False) -> Analysis:
    if not os.path.exists(path):
        raise MediaError(f"{name or path}: no such file")
    if os.path.isdir(path):
        raise MediaError(f"{name or path}: is a folder, not a file")
    if kind_of(name or path) == "video":
        return analyze_video(path, engine, num_frames, models, progress, name=name,
                             advisory_faces_per_track=advisory_faces_per_track, follow_faces=follow_faces,
                             fast=fast)
    return analyze_image(path, engine, name=name, models=models, progress=progress, fast=fast)


# ---------------------------------------------------------------------------------------------------
def _round(x: float | None, nd: int = 4):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def build_report(analysis: Analysis, engine: ScoringEngine, threshold: float | None = None,
                 models=None) -> dict:
    """The verdict for `analysis` at `threshold` with the chosen models (pure, cheap: no model runs)."""
    threshold = engine.default_threshold if threshold is None else float(threshold)
    keys = [k for k in analysis.models if not models or k in models]
    faces_out, per_face_ens, per_face_models = [], [], []
    for r in analysis.faces:
        # A face lacks an advisory member's logit where that member scored a sample of the faces
        # (ADVISORY_FACES_PER_TRACK); with a voter chosen, its ensemble is complete all the same.
        logits = {k: np.array([r.logits[k]]) for k in keys if k in r.logits}
        ens = float(engine.combine(logits, keys)[0]) if logits else math.nan
        probs = {k: float(sigmoid(r.logits[k])) for k in keys if k in r.logits}
        per_face_ens.append(ens)
        per_face_models.append(probs)
        faces_out.append({**r.face.to_dict(), "track": r.track, "fake_probability": _round(ens),
                          "verdict": verdict(ens, threshold) if logits else NOT_SCORED,
                          "models": {k: _round(v) for k, v in probs.items()}})

    counted = counted_tracks(analysis)

    def aggregate(scores: list[float | None]) -> float | None:
        """Most suspicious face (image) or counted person (video), over the faces with a score."""
        scored = [(r.track, s) for r, s in zip(analysis.faces, scores) if s is not None and not math.isnan(s)]
        if not scored:
            return None
        if analysis.kind == "image":
            return max(s for _, s in scored)
        by_track: dict[int, list[float]] = {}
        for track, s in scored:
            by_track.setdefault(track, []).append(s)
        means = [float(np.mean(v)) for t, v in by_track.items() if t in counted]
        return max(means) if means else None

    fake_probability = aggregate(per_face_ens) if analysis.faces and keys else None
    model_scores = {k: _round(aggregate([p.get(k) for p in per_face_models])) for k in keys} if analysis.faces else {}
    report = {
        "input": analysis.input,
        "kind": analysis.kind,
        "verdict": verdict(fake_probability, threshold) if fake_probability is not None else "NO_FACE",
        "fake_probability": _round(fake_probability),
        "threshold": threshold,
        "models": model_scores,
        "models_used": keys,
        "frames_analyzed": analysis.frames_analyzed,
        "frames_with_faces": analysis.frames_with_faces,
        "faces": faces_out,
        "width": analysis.width,
        "height": analysis.height,
        "fast": analysis.fast,
        "notes": list(analysis.notes) + ([FAST_MODE_NOTE] if analysis.fast else []),
    }
    if analysis.kind == "video":
        persons = person_summaries(analysis, faces_out, threshold, keys, counted)
        rows = frame_table(analysis, faces_out, keys, threshold)
        report.update(fps=_round(analysis.fps, 3), frame_count=analysis.frame_count,
                      frames_failed=analysis.frames_failed, frames_searched_in_full=analysis.full_face_searches, people=sum(p["counted"] for p in persons),
                      persons=persons, frame_table=rows, statistics=frame_statistics(rows, threshold))
    return report


def min_track_frames(analysis: Analysis) -> int:
    """Frames a track needs to count as a person: MIN_TRACK_SHARE of the frames with faces."""
    return max(1, math.ceil(MIN_TRACK_SHARE * analysis.frames_with_faces))


def counted_tracks(analysis: Analysis) -> set[int]:
    """Tracks that count as people for the headline and the verdict.

    A track seen in fewer than `min_track_frames` frames is most often one false detection (a pattern
    in the background in one frame) and must not decide a video or add a person; it is still
    reported. Should no track be that long (a crowd, fast cuts), every track counts."""
    lengths: dict[int, int] = {}
    for r in analysis.faces:
        lengths[r.track] = lengths.get(r.track, 0) + 1
    if analysis.kind != "video":
        return set(lengths)
    needed = min_track_frames(analysis)
    return {t for t, n in lengths.items() if n >= needed} or set(lengths)


def person_summaries(analysis: Analysis, faces_out: list[dict], threshold: float, keys: list[str],
                     counted: set[int]) -> list[dict]:
    """One entry per track: mean scores over its faces, its most suspicious face, and whether it counts."""
    tracks: dict[int, list[int]] = {}
    for i, f in enumerate(faces_out):
        tracks.setdefault(f["track"], []).append(i)
    needed = min_track_frames(analysis)
    out = []
    for tid, members in sorted(tracks.items()):
        faces = [faces_out[i] for i in members]
        scores = [f["fake_probability"] for f in faces if f["fake_probability"] is not None]
        mean = float(np.mean(scores)) if scores else None
        models = {}
        for k in keys:
            values = [f["models"][k] for f in faces if f["models"].get(k) is not None]
            models[k] = _round(float(np.mean(values))) if values else None
        top = max(members, key=lambda i: faces_out[i]["fake_probability"]
                  if faces_out[i]["fake_probability"] is not None else -1.0)
        is_counted = tid in counted
        out.append({"person": tid + 1, "track": tid, "frames": len(faces), "first_frame": faces[0]["frame"],
                    "fake_probability": _round(mean),
                    "verdict": verdict(mean, threshold) if mean is not None else "NO_FACE",
                    "models": models, "representative_face": top, "counted": is_counted,
                    "why": (f"seen in {len(faces)} analysed frame(s), at least {needed} needed"
                            if is_counted or len(faces) >= needed else
                            f"seen in only {len(faces)} analysed frame(s), fewer than the {needed} needed: "
                            "probably a false detection, not used for the verdict")})
    return out


def frame_table(analysis: Analysis, faces_out: list[dict], keys: list[str] | None = None,
                threshold: float | None = None) -> list[dict]:
    """One row per analysed frame: the most suspicious face's ensemble and per-model scores (and its
    verdict when a threshold is given)."""
    keys = analysis.models if keys is None else keys
    by_frame: dict[int, list[dict]] = {}
    for f in faces_out:
        by_frame.setdefault(f["frame"], []).append(f)
    rows = []
    for index in analysis.frame_indices:
        faces = by_frame.get(index, [])
        scored = [f for f in faces if f["fake_probability"] is not None]
        top = max(scored, key=lambda f: f["fake_probability"]) if scored else None
        row = {"frame": index, "time_s": _round(index / analysis.fps, 3) if analysis.fps else None,
               "faces": len(faces), "ensemble": top["fake_probability"] if top else None}
        for k in keys:
            row[k] = top["models"].get(k) if top else None
        if threshold is not None:
            row["verdict"] = (verdict(row["ensemble"], threshold) if top else
                              NOT_SCORED if faces else "NO_FACE")
        rows.append(row)
    return rows


def face_table(report: dict) -> list[dict]:
    """One row per face of a report (the photo's table: box, detection confidence, ensemble, verdict
    and per-model scores), for CSV downloads."""
    rows = []
    for i, f in enumerate(report["faces"], start=1):
        x1, y1, x2, y2 = f["box"]
        rows.append({"face": i, "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                     "detection_probability": f["detection_probability"],
                     "ensemble": f["fake_probability"], "verdict": f["verdict"],
                     **{k: f["models"].get(k) for k in report["models_used"]}})
    return rows


def frame_statistics(rows: list[dict], threshold: float) -> dict:
    scores = np.array([r["ensemble"] for r in rows if r["ensemble"] is not None], dtype=np.float64)
    without_face = sum(r["faces"] == 0 for r in rows)
    if scores.size == 0:
        return {"frames_without_face": without_face, "mean": None, "median": None, "std": None,
                "min": None, "max": None, "share_fake": None}
    return {"frames_without_face": without_face,
            "mean": _round(scores.mean()), "median": _round(np.median(scores)), "std": _round(scores.std()),
            "min": _round(scores.min()), "max": _round(scores.max()),
            "share_fake": _round(float(np.mean(scores >= threshold)))}

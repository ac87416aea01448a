"""One input in, one outcome out: the report (the `predict.py --json` object) or an error record.

Shared by the command line (predict.py, single files and batch scans) and the HTTP API (serve.py),
so that both analyse through the same `pipeline.analyze_path` / `pipeline.build_report` and word
their failures the same way.

    analyze_to_report(path, engine, options)   -> the report
    failure_message(label, exc)                -> the one line the CLI prints after `error: `
    error_reason(exc, label)                   -> a short machine-readable reason ("unreadable", ...)
    error_record(input, exc)                   -> {"input", "error", "reason"} (batch output lines)
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from media import ADVISORY_FACES_PER_TRACK, DEFAULT_VIDEO_FRAMES_ANALYSED, MediaError
from pipeline import analyze_path, build_report
from scoring import ScoringEngine

# MediaError carries only a sentence for people (media.py, video_processor.py, pipeline.py word them;
# tests/test_hostile_inputs.py pins the wording). Batch summaries and HTTP status codes need a stable
# category, so it is read from those fixed phrases here, in one place. First match wins.
REASON_BY_PHRASE = (
    ("unsupported file type", "unsupported_type"),
    ("file is empty", "empty"),
    ("MB limit", "too_large"),                   # file bytes over media.MAX_UPLOAD_BYTES
    ("-pixel limit", "too_many_pixels"),         # image over media.MAX_IMAGE_PIXELS
    ("pixel-per-frame limit", "too_many_pixels"),
    ("decompression bomb guard", "too_many_pixels"),
    ("no such file", "not_found"),
    ("is a folder", "not_a_file"),
    ("cannot read file", "cannot_open"),
)
UNREADABLE = "unreadable"            # any other MediaError: corrupt, truncated, no decodable frame
ANALYSIS_FAILED = "analysis_failed"  # not a MediaError: the input broke something we did not foresee


@dataclass(frozen=True)
class AnalysisOptions:
    frames: int = DEFAULT_VIDEO_FRAMES_ANALYSED
    models: list[str] | None = None      # None: every installed model
    threshold: float | None = None       # None: the ensemble's calibrated threshold
    advisory_faces: int | None = ADVISORY_FACES_PER_TRACK   # per person in a video; 0 or None: every face
    follow_faces: bool = True            # video: follow faces between close frames (False: search each in full)
    fast: bool = False                   # voters score each face once (pipeline.FAST_MODE_NOTE)


def analyze_to_report(path: str, engine: ScoringEngine, options: AnalysisOptions, name: str | None = None) -> dict:
    """Analyse one file and return its report; `name` replaces the path in the report and messages."""
    analysis = analyze_path(path, engine, num_frames=options.frames, models=options.models, name=name,
                            advisory_faces_per_track=options.advisory_faces, follow_faces=options.follow_faces,
                            fast=options.fast)
    return build_report(analysis, engine, options.threshold, options.models)


def models_not_installed(engine: ScoringEngine, models: list[str] | None) -> list[str]:
    return [k for k in (models or []) if k not in engine.models]


def failure_message(label: str, exc: BaseException) -> str:
    """The user-facing sentence for a failed input; a MediaError already names the file."""
    if isinstance(exc, MediaError):
        return str(exc)
    return f"{label}: could not be analysed ({type(exc).__name__}: {exc})"


def error_reason(exc: BaseException, label: str = "") -> str:
    if not isinstance(exc, MediaError):
        return ANALYSIS_FAILED
    text = str(exc)
    # The message starts with the file's name, which may itself hold any of the phrases.
    if label and text.startswith(f"{label}: "):
        text = text[len(label) + 2:]
    return next((reason for phrase, reason in REASON_BY_PHRASE if phrase in text), UNREADABLE)


def error_record(input_label: str, exc: BaseException) -> dict:
    return {"input": input_label, "error": failure_message(input_label, exc), "reason": error_reason(exc, input_label)}


def to_json(obj: dict) -> str:
    """The one serialisation of reports everywhere (CLI lines, batch files, API bodies)."""
    return json.dumps(obj, ensure_ascii=False)

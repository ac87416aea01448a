"""Golden reports: the full `build_report` of a fixed synthetic video and image, scored by the seeded
random models on the torch runtime, must match the snapshots in tests/golden/ (floats within 1e-4,
timings excluded). Proves that refactors do not change behaviour.

Regenerate (only after an intended change in behaviour): DFSTUDIO_UPDATE_GOLDEN=1 pytest tests/test_report_golden.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import pipeline
from conftest import make_video

GOLDEN = Path(__file__).resolve().parent / "golden"
TOLERANCE = 1e-4
UPDATE = os.environ.get("DFSTUDIO_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def torch_engine(random_models_dir):
    from scoring import ScoringEngine
    return ScoringEngine(random_models_dir, runtime="torch")


def _compare(got, want, where: str = "report") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), \
            f"{where}: keys differ: {sorted(set(got) ^ set(want)) if isinstance(got, dict) else got!r}"
        for key in want:
            _compare(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} vs {want!r}"
        for i, (x, y) in enumerate(zip(got, want)):
            _compare(x, y, f"{where}[{i}]")
    elif isinstance(want, float) or (isinstance(got, float) and isinstance(want, int)
                                     and not isinstance(want, bool)):
        assert isinstance(got, (int, float)) and not isinstance(got, bool), f"{where}: {got!r} vs {want!r}"
        assert got == pytest.approx(want, abs=TOLERANCE), f"{where}: {got} vs {want}"
    else:
        assert got == want, f"{where}: {got!r} vs {want!r}"


def _check(name: str, report: dict) -> None:
    report = json.loads(json.dumps(report))      # the JSON the CLI prints: tuples become lists
    report.pop("timings", None)
    path = GOLDEN / f"{name}.json"
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"{path} is missing: run with DFSTUDIO_UPDATE_GOLDEN=1 to create it")
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        return
    _compare(report, json.loads(path.read_text()))


def test_video_report_matches_the_golden_snapshot(torch_engine, astronaut, tmp_path):
    video = make_video(tmp_path / "clip.mp4", astronaut[::2, ::2].copy(), n=24)
    analysis = pipeline.analyze_path(str(video), torch_engine, num_frames=8, name="clip.mp4")
    _check("video_report", pipeline.build_report(analysis, torch_engine))
    # A subset of models and another threshold go through the same code.
    _check("video_report_subset", pipeline.build_report(analysis, torch_engine, threshold=0.3,
                                                        models=["swin", "cnn_transformer"]))


def test_image_report_matches_the_golden_snapshot(torch_engine, astronaut_jpg):
    analysis = pipeline.analyze_path(str(astronaut_jpg), torch_engine, name="astronaut.jpg")
    _check("image_report", pipeline.build_report(analysis, torch_engine))

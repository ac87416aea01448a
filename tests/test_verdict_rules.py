"""The aggregation rules of `pipeline.build_report` on hand-built analyses: no models, no media.

Each face carries chosen calibrated logits, so every expected number below follows from the rules
(README, "How a verdict is reached") and nothing else.
"""
import math

import numpy as np
import pytest

from faces import Face
from pipeline import Analysis, FaceRecord, build_report
from scoring import ScoringEngine, combine, sigmoid

KEYS = ["xception", "efficientnet"]


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.fixture()
def engine(tmp_path):
    """A real engine over an empty model folder (it loads nothing); the ensemble is set by each test."""
    e = ScoringEngine(tmp_path, runtime="torch")
    e.ensemble_manifest = None          # equal weights
    return e


def face(frame: int, track: int, p: dict[str, float], x: float = 10.0) -> FaceRecord:
    return FaceRecord(face=Face(box=(x, 10.0, x + 50.0, 70.0), probability=0.99, frame=frame),
                      crop=np.zeros((4, 4, 3), np.uint8), logits={k: logit(v) for k, v in p.items()}, track=track)


def video(faces: list[FaceRecord], frames: int) -> Analysis:
    return Analysis(input="v.mp4", kind="video", faces=faces, frames_analyzed=frames,
                    frame_indices=list(range(frames)), fps=25.0, frame_count=frames, models=KEYS)


def both(p: float) -> dict[str, float]:
    return {k: p for k in KEYS}


def test_an_image_takes_its_most_suspicious_face(engine):
    analysis = Analysis(input="a.jpg", kind="image", frames_analyzed=1, frame_indices=[0], models=KEYS,
                        faces=[face(0, 0, both(0.2)), face(0, 1, both(0.9), x=100), face(0, 2, both(0.4), x=200)])
    report = build_report(analysis, engine, threshold=0.5)
    assert report["fake_probability"] == pytest.approx(0.9, abs=1e-4)
    assert report["verdict"] == "FAKE"
    assert [f["verdict"] for f in report["faces"]] == ["REAL", "FAKE", "REAL"]


def test_the_threshold_is_at_or_above(engine):
    analysis = Analysis(input="a.jpg", kind="image", frames_analyzed=1, frame_indices=[0], models=KEYS,
                        faces=[face(0, 0, both(0.6))])
    assert build_report(analysis, engine, threshold=0.6)["verdict"] == "FAKE"
    assert build_report(analysis, engine, threshold=0.6001)["verdict"] == "REAL"


def test_a_one_frame_track_cannot_decide_a_video_nor_count_as_a_person(engine):
    real_person = [face(i, 0, both(0.1)) for i in range(10)]
    ghost = [face(4, 1, both(0.99), x=300)]                # one false detection, very "fake"
    report = build_report(video(real_person + ghost, 10), engine, threshold=0.5)
    assert report["verdict"] == "REAL"
    assert report["fake_probability"] == pytest.approx(0.1, abs=1e-4)
    assert report["people"] == 1
    persons = {p["person"]: p for p in report["persons"]}
    assert persons[1]["counted"] and not persons[2]["counted"]
    assert "false detection" in persons[2]["why"] and persons[2]["frames"] == 1
    assert report["models"]["xception"] == pytest.approx(0.1, abs=1e-4)   # per-model scores too


def test_when_no_track_is_long_enough_every_track_counts(engine):
    # Ten tracks of one frame each in ten frames with faces: none reaches a fifth (2 frames).
    faces = [face(i, i, both(0.3 if i else 0.8)) for i in range(10)]
    report = build_report(video(faces, 10), engine, threshold=0.5)
    assert report["people"] == 10 and report["verdict"] == "FAKE"


def test_two_people_one_fake_the_video_is_fake_the_other_person_real(engine):
    faces = [face(i, 0, both(0.9)) for i in range(6)] + [face(i, 1, both(0.2), x=300) for i in range(6)]
    report = build_report(video(faces, 6), engine, threshold=0.5)
    assert report["verdict"] == "FAKE" and report["people"] == 2
    by_person = {p["person"]: p for p in report["persons"]}
    assert by_person[1]["verdict"] == "FAKE" and by_person[2]["verdict"] == "REAL"
    assert by_person[2]["models"] == {"xception": pytest.approx(0.2, abs=1e-4), "efficientnet": pytest.approx(0.2, abs=1e-4)}
    # The representative face is the person's most suspicious one, as an index into report["faces"].
    assert report["faces"][by_person[1]["representative_face"]]["track"] == 0


def test_the_frame_table_carries_verdicts_and_the_top_face(engine):
    faces = [face(0, 0, both(0.2)), face(0, 1, both(0.7), x=300), face(2, 0, both(0.4))]
    report = build_report(video(faces, 3), engine, threshold=0.5)
    rows = {r["frame"]: r for r in report["frame_table"]}
    assert rows[0]["faces"] == 2 and rows[0]["ensemble"] == pytest.approx(0.7, abs=1e-4) and rows[0]["verdict"] == "FAKE"
    assert rows[1]["faces"] == 0 and rows[1]["verdict"] == "NO_FACE"
    assert rows[2]["verdict"] == "REAL"
    assert report["statistics"]["frames_without_face"] == 1


def test_switching_members_off_rescales_the_learnt_ensemble(engine):
    manifest = {"weights": {"xception": 0.25, "efficientnet": 0.75}, "bias": 0.0}
    engine.ensemble_manifest = manifest
    z = {"xception": np.array([2.0]), "efficientnet": np.array([-1.0])}
    both_on = combine(manifest, z)
    assert both_on[0] == pytest.approx(float(sigmoid(0.25 * 2.0 - 0.75 * 1.0)))
    # Only xception on: its weight is scaled up to the ensemble's full weight (1.0), not left at 0.25.
    assert combine(manifest, z, ["xception"])[0] == pytest.approx(float(sigmoid(2.0)))
    analysis = Analysis(input="a.jpg", kind="image", frames_analyzed=1, frame_indices=[0], models=KEYS,
                        faces=[face(0, 0, {"xception": float(sigmoid(2.0)), "efficientnet": float(sigmoid(-1.0))})])
    assert build_report(analysis, engine, 0.5, models=["xception"])["fake_probability"] == pytest.approx(
        float(sigmoid(2.0)), abs=1e-4)


def test_no_face_means_no_verdict(engine):
    report = build_report(video([], 5), engine, threshold=0.5)
    assert report["verdict"] == "NO_FACE" and report["fake_probability"] is None and report["people"] == 0

"""Advisory members score a sample of each person's faces in a video (ADVISORY_FACES_PER_TRACK).

They cannot change a verdict (weight 0 in the ensemble), so the ensemble of every face, every person
and the file must be exactly what scoring every face gives; only their own per-face values thin out.
"""
import json
import math

import numpy as np
import pytest

import pipeline
from conftest import TWO_MODEL_KEYS, make_drifting_video, write_random_models
from faces import Face
from media import ADVISORY_FACES_PER_TRACK
from outcomes import AnalysisOptions, analyze_to_report
from pipeline import NOT_SCORED, Analysis, FaceRecord, advisory_sample, build_report
from scoring import ScoringEngine

VOTER, ADVISORY = "cnn_transformer", "cross_attention"


def test_a_sample_spreads_over_each_track_from_its_first_face_to_its_last():
    tracks = [0] * 40 + [1] * 5
    chosen = advisory_sample(tracks, 16)
    first_track = [i for i in chosen if tracks[i] == 0]
    assert len(first_track) == 16 and first_track[0] == 0 and first_track[-1] == 39
    assert np.diff(first_track).max() - np.diff(first_track).min() <= 1      # evenly spaced
    assert [i for i in chosen if tracks[i] == 1] == [40, 41, 42, 43, 44]     # short tracks: every face
    # Interleaved tracks (two people in every frame) are sampled per track, and come back in order.
    interleaved = [0, 1] * 30
    chosen = advisory_sample(interleaved, 4)
    assert chosen == sorted(chosen) and [interleaved[i] for i in chosen].count(0) == 4


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.fixture()
def engine(tmp_path):
    e = ScoringEngine(tmp_path, runtime="torch")          # an empty folder: the ensemble is set here
    e.ensemble_manifest = {"weights": {VOTER: 1.0, ADVISORY: 0.0}, "bias": 0.0}
    return e


def face(frame: int, p_voter: float, p_advisory: float | None) -> FaceRecord:
    logits = {VOTER: logit(p_voter)}
    if p_advisory is not None:
        logits[ADVISORY] = logit(p_advisory)
    return FaceRecord(face=Face(box=(10.0, 10.0, 60.0, 70.0), probability=0.99, frame=frame),
                      crop=np.zeros((4, 4, 3), np.uint8), logits=logits, track=0)


def test_a_report_over_a_sampled_advisory_member(engine):
    # Six frames of one person; the advisory member scored frames 0, 3 and 5.
    faces = [face(i, 0.2 + 0.1 * i, {0: 0.9, 3: 0.6, 5: 0.3}.get(i)) for i in range(6)]
    analysis = Analysis(input="v.mp4", kind="video", faces=faces, frames_analyzed=6, frame_indices=list(range(6)),
                        fps=25.0, frame_count=6, models=[VOTER, ADVISORY])
    report = build_report(analysis, engine, threshold=0.5)
    # The ensemble is the voter's alone, on every face: the sample changes nothing there.
    assert [f["fake_probability"] for f in report["faces"]] == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6, 0.7], abs=1e-4)
    assert report["fake_probability"] == pytest.approx(0.45, abs=1e-4)
    # The advisory member's person and file scores are its mean over the faces it scored.
    assert report["persons"][0]["models"][ADVISORY] == pytest.approx(0.6, abs=1e-4)
    assert report["models"][ADVISORY] == pytest.approx(0.6, abs=1e-4)
    rows = report["frame_table"]
    assert [r[ADVISORY] for r in rows] == [pytest.approx(0.9), None, None, pytest.approx(0.6), None, pytest.approx(0.3)]
    assert all(r["verdict"] in ("REAL", "FAKE") for r in rows)
    assert ADVISORY not in report["faces"][1]["models"]

    # Only the advisory member switched on (the app's switches re-run build_report, not the analysis):
    # the faces it did not score are NOT_SCORED, the verdict rests on the ones it did.
    only = build_report(analysis, engine, threshold=0.5, models=[ADVISORY])
    assert [f["verdict"] for f in only["faces"]] == ["FAKE", NOT_SCORED, NOT_SCORED, "FAKE", NOT_SCORED, "REAL"]
    assert only["fake_probability"] == pytest.approx(0.6, abs=1e-4)
    assert [r["verdict"] for r in only["frame_table"]][:2] == ["FAKE", NOT_SCORED]
    assert only["statistics"]["frames_without_face"] == 0


@pytest.fixture(scope="module")
def voter_and_advisory_dir(tmp_path_factory):
    out = write_random_models(tmp_path_factory.mktemp("voter_and_advisory"), keys=TWO_MODEL_KEYS, seed=3)
    (out / "ensemble.json").write_text(json.dumps(
        {"key": "ensemble", "weights": {VOTER: 1.0, ADVISORY: 0.0}, "bias": 0.0, "threshold": 0.5}))
    return out


def test_a_video_scores_advisory_members_on_a_sample_and_the_verdict_is_unchanged(
        voter_and_advisory_dir, astronaut, tmp_path):
    engine = ScoringEngine(voter_and_advisory_dir)
    assert engine.advisory_keys == [ADVISORY]
    clip = make_drifting_video(tmp_path / "clip.mp4", astronaut, frames=8)
    sampled = pipeline.analyze_video(str(clip), engine, num_frames=8, advisory_faces_per_track=3)
    every = pipeline.analyze_video(str(clip), engine, num_frames=8, advisory_faces_per_track=None)
    assert len(every.faces) >= 6 and len({r.track for r in every.faces}) == 1
    assert sum(ADVISORY in r.logits for r in sampled.faces) == 3
    assert all(ADVISORY in r.logits for r in every.faces) and all(VOTER in r.logits for r in sampled.faces)
    assert any("scored 3 of the" in note for note in sampled.notes) and not every.notes
    a, b = build_report(sampled, engine), build_report(every, engine)
    assert a["fake_probability"] == pytest.approx(b["fake_probability"], abs=1e-6)
    assert a["verdict"] == b["verdict"]
    assert [f["fake_probability"] for f in a["faces"]] == pytest.approx([f["fake_probability"] for f in b["faces"]], abs=1e-6)
    # The sampled faces' advisory scores are the very ones scoring every face gives.
    for x, y in zip(sampled.faces, every.faces):
        if ADVISORY in x.logits:
            assert x.logits[ADVISORY] == pytest.approx(y.logits[ADVISORY], abs=1e-5)
    # The option reaches the analysis from the CLI's and the API's options (outcomes.AnalysisOptions).
    report = analyze_to_report(str(clip), engine, AnalysisOptions(frames=8, advisory_faces=3))
    assert sum(ADVISORY in f["models"] for f in report["faces"]) == 3 and report["notes"] == sampled.notes
    report = analyze_to_report(str(clip), engine, AnalysisOptions(frames=8, advisory_faces=0))
    assert all(ADVISORY in f["models"] for f in report["faces"]) and not report["notes"]
    # Advisory members alone are never sampled: they decide then.
    alone = pipeline.analyze_video(str(clip), engine, num_frames=8, models=[ADVISORY], advisory_faces_per_track=3)
    assert all(ADVISORY in r.logits for r in alone.faces)


def test_the_cli_and_the_api_take_the_sample_size():
    import predict
    import serve

    parser = predict.build_parser()
    assert parser.parse_args(["v.mp4"]).advisory_faces == ADVISORY_FACES_PER_TRACK
    assert parser.parse_args(["v.mp4", "--advisory-faces", "0"]).advisory_faces == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["v.mp4", "--advisory-faces", "-3"])
    assert serve.parse_option("advisory_faces", "5") == 5

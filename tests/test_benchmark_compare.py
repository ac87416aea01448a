"""`benchmark.compare` on hand-made outcomes: the agreement check between ours and the naive pipeline,
without running either (fast; the end-to-end run is `test_benchmark_smoke.py`)."""
from __future__ import annotations

import pytest

import benchmark


def _face(frame, box, p, models):
    return {"frame": frame, "box": box, "p": p, "models": models}


def _outcome(faces):
    ps = [f["p"] for f in faces]
    return {"faces": faces, "score": sum(ps) / len(ps), "verdict": "REAL"}


def test_per_model_differences_name_the_member_that_moves():
    box = [10.0, 10.0, 110.0, 140.0]
    ours = _outcome([_face(0, box, 0.30, {"xception": 0.40, "efficientnet": 0.20}),
                     _face(1, box, 0.32, {"xception": 0.41, "efficientnet": 0.22})])
    naive = _outcome([_face(0, [10.5, 10.0, 110.5, 140.0], 0.25, {"xception": 0.40, "efficientnet": 0.10}),
                      _face(1, box, 0.32, {"xception": 0.43, "efficientnet": 0.22})])
    result = benchmark.compare(ours, naive, tolerance=0.02)
    by_model = result["per_model_face_p_diff"]
    assert set(by_model) == {"xception", "efficientnet"}
    assert by_model["efficientnet"]["max"] == pytest.approx(0.10)
    assert by_model["efficientnet"]["mean"] == pytest.approx(0.05)
    assert by_model["xception"]["max"] == pytest.approx(0.02)
    assert result["per_face_p_diff"]["max"] == pytest.approx(0.05)
    assert result["worst_faces"][0]["frame"] == 0


def test_unmatched_faces_are_left_out_of_the_differences():
    ours = _outcome([_face(0, [0.0, 0.0, 50.0, 50.0], 0.9, {"xception": 0.9})])
    naive = _outcome([_face(0, [200.0, 200.0, 250.0, 250.0], 0.1, {"xception": 0.1})])
    result = benchmark.compare(ours, naive, tolerance=0.02)
    assert result["unmatched_faces"] == 2 and not result["faces_ok"] and not result["passed"]
    assert result["per_model_face_p_diff"] == {} and result["per_face_p_diff"]["max"] is None

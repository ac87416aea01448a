"""predict.py: table and JSON output, videos, errors without tracebacks, no models installed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import predict
from conftest import make_video

ROOT = Path(__file__).resolve().parents[1]


def test_json_output_schema_for_an_image(random_models_dir, astronaut_jpg, capsys):
    assert predict.main([str(astronaut_jpg), "--models-dir", str(random_models_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip())
    assert report["kind"] == "image" and report["verdict"] in ("REAL", "FAKE")
    assert set(report["models"]) == {"xception", "efficientnet", "swin", "cross_attention", "cnn_transformer"}
    assert 0 <= report["fake_probability"] <= 1 and report["frames_analyzed"] == 1
    face = report["faces"][0]
    assert set(face) >= {"frame", "box", "detection_probability", "fake_probability", "models"}
    assert report["fake_probability"] == pytest.approx(max(f["fake_probability"] for f in report["faces"]))


def test_fast_mode_scores_each_face_once_and_says_so(random_models_dir, astronaut_jpg, capsys):
    """--fast: the voters score every face once (the engine's single view), and the report says so."""
    import pipeline
    from scoring import ScoringEngine

    assert predict.main([str(astronaut_jpg), "--models-dir", str(random_models_dir), "--json"]) == 0
    default = json.loads(capsys.readouterr().out.strip())
    assert predict.main([str(astronaut_jpg), "--models-dir", str(random_models_dir), "--json", "--fast"]) == 0
    fast = json.loads(capsys.readouterr().out.strip())
    assert default["fast"] is False and pipeline.FAST_MODE_NOTE not in default["notes"]
    assert fast["fast"] is True and pipeline.FAST_MODE_NOTE in fast["notes"]
    assert [f["box"] for f in fast["faces"]] == [f["box"] for f in default["faces"]]
    plain = ScoringEngine(random_models_dir, tta="none")
    expected = pipeline.build_report(pipeline.analyze_image(str(astronaut_jpg), plain), plain)
    assert fast["faces"][0]["models"] == expected["faces"][0]["models"]
    assert fast["faces"][0]["models"] != default["faces"][0]["models"]


def test_threshold_and_model_subset(random_models_dir, astronaut_jpg, capsys):
    predict.main([str(astronaut_jpg), "--models-dir", str(random_models_dir), "--json", "--models",
                  "swin,xception", "--threshold", "0"])
    report = json.loads(capsys.readouterr().out.strip())
    assert list(report["models"]) == ["xception", "swin"] and report["verdict"] == "FAKE"
    predict.main([str(astronaut_jpg), "--models-dir", str(random_models_dir), "--json", "--threshold", "1"])
    assert json.loads(capsys.readouterr().out.strip())["verdict"] == "REAL"


def test_video_samples_frames_and_tracks_the_face(random_models_dir, astronaut, tmp_path, capsys):
    video = make_video(tmp_path / "clip.mp4", astronaut, n=30)
    assert predict.main([str(video), "--frames", "8", "--models-dir", str(random_models_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip())
    assert report["kind"] == "video" and report["frames_analyzed"] == 8 and report["frames_with_faces"] == 8
    assert len(report["persons"]) == 1 and report["persons"][0]["frames"] == 8
    frames = [f["frame"] for f in report["faces"]]
    assert frames == sorted(frames) and len(set(frames)) == 8
    assert report["fake_probability"] == pytest.approx(report["persons"][0]["fake_probability"], abs=1e-3)


def test_search_every_frame_turns_face_following_off(random_models_dir, astronaut, tmp_path, capsys):
    """Frames 1/25 s apart: by default most are followed, --search-every-frame searches all 10."""
    video = make_video(tmp_path / "clip.mp4", astronaut[::2, ::2].copy(), n=10, fps=25.0)
    args = [str(video), "--frames", "10", "--models-dir", str(random_models_dir), "--json"]
    assert predict.main(args) == 0
    followed = json.loads(capsys.readouterr().out.strip())
    assert predict.main(args + ["--search-every-frame"]) == 0
    searched = json.loads(capsys.readouterr().out.strip())
    assert searched["frames_searched_in_full"] == 10 > followed["frames_searched_in_full"] >= 3
    assert followed["frames_with_faces"] == searched["frames_with_faces"] == 10


def test_bad_inputs_give_one_error_line_and_exit_2_while_others_run(random_models_dir, astronaut_jpg, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("this is text")
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), str(bad), str(astronaut_jpg),
                           str(tmp_path / "missing.png"), str(tmp_path / "notes.txt"),
                           "--models-dir", str(random_models_dir), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "bad.jpg" in errors[0] and "missing.png" in errors[1] and "notes.txt" in errors[2]
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout.strip())["input"].endswith("astronaut.jpg")


def test_no_models_installed_says_how_to_get_them(tmp_path, astronaut_jpg, capsys):
    assert predict.main([str(astronaut_jpg), "--models-dir", str(tmp_path)]) == predict.EXIT_NO_MODELS
    err = capsys.readouterr().err
    assert "no detector models are installed" in err and "README" in err


def test_readable_table(random_models_dir, astronaut_jpg, capsys):
    predict.main([str(astronaut_jpg), "--models-dir", str(random_models_dir)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("VERDICT") and "astronaut.jpg" in out[1] and "1 face(s)" in out[1]

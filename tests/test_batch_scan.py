"""predict.py batch scans: folders walked, one JSON line per input, CSV, summary, and resume after kill -9.

The key promise: a scan killed at any moment (SIGKILL, here in the middle of a real subprocess run,
plus a cut-off last line as a kill during a write would leave) and then resumed holds every input
exactly once, with the same results, in the same order, as a scan that was never interrupted.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import batch_scan
import predict
import scoring
from media import MediaError
from outcomes import error_reason
from report_helpers import assert_reports_match
from conftest import every_cli_run_uses, write_video

ROOT = Path(__file__).resolve().parents[1]
FRAMES = "4"
KILL_AFTER_LINES = 3
SUBPROCESS_TIMEOUT_S = 300      # generous: the machine may be shared with training


# ---------------------------------------------------------------------------------------------------
# A folder tree to scan
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tree(tmp_path_factory, astronaut) -> Path:
    """Twelve small face images, a video, an unreadable .jpg, an upper-case extension, a text file
    (not media: skipped), a link to an image (the same input: scanned once), nested two deep."""
    root = tmp_path_factory.mktemp("scan tree ü")
    (root / "sub" / "deeper").mkdir(parents=True)
    for i, side in enumerate((160, 176, 192, 208, 224, 240)):
        small = cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_AREA)
        Image.fromarray(small).save(root / f"face_{i:02d}.png")
        Image.fromarray(np.ascontiguousarray(small[:, ::-1])).save(root / "sub" / f"mirrored_{i:02d}.jpg", quality=90)
    write_video(root / "sub" / "deeper" / "clip.avi", [np.roll(astronaut[::4, ::4], 2 * i, axis=1) for i in range(6)])
    (root / "sub" / "deeper" / "broken.jpg").write_text("not a JPEG")
    Image.fromarray(astronaut[::3, ::3]).save(root / "sub" / "UPPER.PNG")
    (root / "sub" / "notes.txt").write_text("not media")
    os.symlink(root / "face_00.png", root / "sub" / "link_to_face_00.png")
    return root


def expected_inputs(tree: Path) -> list[str]:
    names = ([f"face_{i:02d}.png" for i in range(6)] + ["sub/UPPER.PNG"] + [f"sub/mirrored_{i:02d}.jpg" for i in range(6)]
             + ["sub/deeper/broken.jpg", "sub/deeper/clip.avi"])
    return [str(tree / n) for n in names]


@pytest.fixture(scope="module")
def models_dir(two_random_models_dir) -> Path:
    return two_random_models_dir


@pytest.fixture(scope="module")
def shared_engine(models_dir):
    """predict.main() builds its own ScoringEngine; in-process runs share one loaded once."""
    with every_cli_run_uses(scoring.ScoringEngine(models_dir)) as engine:
        yield engine


def run_predict(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = predict.main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def scan_args(tree: Path, output: Path, models_dir: Path, *extra) -> list[str]:
    return [str(tree), "--recursive", "--output", str(output), "--models-dir", str(models_dir), "--frames", FRAMES,
            *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tree, models_dir, shared_engine):
    """The reference: one scan of the tree that nobody interrupts."""
    out_dir = tmp_path_factory.mktemp("uninterrupted")
    output, table = out_dir / "results.jsonl", out_dir / "results.csv"
    rc, stdout, stderr = run_predict(*scan_args(tree, output, models_dir, "--csv", table))
    return {"rc": rc, "stdout": stdout, "stderr": stderr, "output": output, "records": read_lines(output),
            "csv": list(csv.DictReader(table.open(encoding="utf-8")))}


# ---------------------------------------------------------------------------------------------------
# A whole scan
# ---------------------------------------------------------------------------------------------------
def test_scan_writes_one_line_per_input_errors_included(uninterrupted, tree):
    records = uninterrupted["records"]
    assert [r["input"] for r in records] == expected_inputs(tree)     # sorted walk, .txt skipped, link once
    assert [r[batch_scan.RESOLVED_KEY] for r in records] == [str(Path(p).resolve()) for p in expected_inputs(tree)]
    broken = records[-2]
    assert set(broken) == {"input", "error", "reason", batch_scan.RESOLVED_KEY}
    assert broken["error"] == f"{broken['input']}: not a readable image (unknown or corrupt format)"
    assert broken["reason"] == "unreadable"
    video = records[-1]
    assert video["kind"] == "video" and video["frames_analyzed"] == int(FRAMES)
    assert sum(len(r.get("faces", [])) for r in records) >= 12
    assert uninterrupted["rc"] == predict.EXIT_INPUT_ERROR      # an input failed, as in the plain mode
    assert uninterrupted["stdout"] == ""                        # results go to the file


def test_lines_are_the_plain_json_of_each_file(uninterrupted, tree, models_dir, shared_engine):
    for record in uninterrupted["records"][:1] + uninterrupted["records"][-1:]:
        rc, stdout, _ = run_predict(record["input"], "--models-dir", models_dir, "--json", "--frames", FRAMES)
        assert rc == 0
        assert_reports_match(record, json.loads(stdout), ignore=(batch_scan.RESOLVED_KEY,))


def test_progress_summary_and_csv(uninterrupted, tree):
    stderr = uninterrupted["stderr"]
    assert "file/s" in stderr and "faces=" in stderr and "errors=1" in stderr     # the tqdm bar
    assert f"error: {tree}/sub/deeper/broken.jpg: not a readable image" in stderr
    assert "summary: 15 input(s): " in stderr and "summary: 1 error(s): unreadable 1" in stderr
    rows = uninterrupted["csv"]
    assert list(rows[0]) == ["input", "kind", "verdict", "fake_probability", "faces", "cross_attention",
                             "cnn_transformer", "error", "reason"]
    assert [r["input"] for r in rows] == expected_inputs(tree)
    by_input = {r["input"]: r for r in uninterrupted["records"]}
    for row in rows:
        record = by_input[row["input"]]
        if "error" in record:
            assert (row["verdict"], row["reason"], row["kind"], row["fake_probability"]) == ("ERROR", "unreadable", "", "")
            continue
        assert row["kind"] == record["kind"] and row["verdict"] == record["verdict"]
        assert int(row["faces"]) == len(record["faces"])
        for key in ("fake_probability", "cross_attention", "cnn_transformer"):
            expected = record[key] if key == "fake_probability" else record["models"][key]
            assert row[key] == ("" if expected is None else str(expected))


def test_existing_output_needs_resume_and_a_finished_scan_resumes_to_nothing(uninterrupted, tree, models_dir,
                                                                             tmp_path, shared_engine):
    output = tmp_path / "results.jsonl"
    output.write_bytes(uninterrupted["output"].read_bytes())
    before = output.read_bytes()
    rc, _, stderr = run_predict(*scan_args(tree, output, models_dir))
    assert rc == predict.EXIT_INPUT_ERROR and "add --resume" in stderr and output.read_bytes() == before
    rc, _, stderr = run_predict(*scan_args(tree, output, models_dir, "--resume"))
    assert rc == predict.EXIT_OK and output.read_bytes() == before
    assert "15 input(s) were already in the output and skipped" in stderr
    # --resume without --output is a usage error (argparse: exit 2)
    with pytest.raises(SystemExit) as info:
        predict.main([str(tree), "--recursive", "--resume"])
    assert info.value.code == 2


def test_recursive_without_output_prints_results_like_the_plain_mode(uninterrupted, tree, models_dir, shared_engine):
    rc, stdout, stderr = run_predict(tree / "sub" / "deeper", "--recursive", "--json", "--models-dir", models_dir,
                                     "--frames", FRAMES)
    assert rc == predict.EXIT_INPUT_ERROR
    printed = [json.loads(line) for line in stdout.splitlines()]
    assert [p["input"] for p in printed] == [str(tree / "sub" / "deeper" / "clip.avi")]   # errors only on stderr
    assert_reports_match(printed[0], uninterrupted["records"][-1], ignore=(batch_scan.RESOLVED_KEY,))
    assert "error: " in stderr and "summary: 2 input(s)" in stderr


# ---------------------------------------------------------------------------------------------------
# Kill -9 and resume
# ---------------------------------------------------------------------------------------------------
def count_complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.slow   # SIGKILLs a real scan subprocess, like the training kill-and-resume test
def test_killed_scan_resumes_to_the_uninterrupted_result(uninterrupted, tree, models_dir, tmp_path, shared_engine):
    output = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), *scan_args(tree, output, models_dir)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    try:
        while count_complete_lines(output) < KILL_AFTER_LINES and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the scan ended before it could be killed"
    done_at_kill = count_complete_lines(output)
    total = len(expected_inputs(tree))
    assert KILL_AFTER_LINES <= done_at_kill < total, done_at_kill
    # A kill during a write leaves the start of a line without its newline: make sure of one.
    next_line = json.dumps(uninterrupted["records"][done_at_kill])
    with open(output, "ab") as fh:
        fh.write(next_line[: len(next_line) // 2].encode())

    rc, _, stderr = run_predict(*scan_args(tree, output, models_dir, "--resume"))
    broken_done_before = expected_inputs(tree).index(str(tree / "sub/deeper/broken.jpg")) < done_at_kill
    assert rc == (predict.EXIT_OK if broken_done_before else predict.EXIT_INPUT_ERROR)
    assert "dropped a cut-off last line" in stderr
    assert f"{done_at_kill} input(s) were already in the output and skipped" in stderr

    resumed = read_lines(output)                # every line parses: the cut-off one is gone
    keys = [r[batch_scan.RESOLVED_KEY] for r in resumed]
    assert len(keys) == len(set(keys)) == total                       # each input exactly once
    assert [r["input"] for r in resumed] == [r["input"] for r in uninterrupted["records"]]   # and in order
    for got, want in zip(resumed, uninterrupted["records"]):
        assert_reports_match(got, want, ignore=())


# ---------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------
def test_expand_inputs(tree):
    walked = batch_scan.expand_inputs([str(tree)], recursive=True)
    assert walked == expected_inputs(tree)
    # The same file twice (directly, through the folder, through a link) is one input; first spelling wins.
    again = batch_scan.expand_inputs([str(tree / "face_00.png"), str(tree), str(tree / "sub" / "link_to_face_00.png")],
                                     recursive=True)
    assert again[0] == str(tree / "face_00.png") and len(again) == len(walked)
    # Without --recursive a folder stays one (refused) input, and explicit files keep any extension.
    assert batch_scan.expand_inputs([str(tree), str(tree / "sub" / "notes.txt")], recursive=False) == \
        [str(tree), str(tree / "sub" / "notes.txt")]


def test_drop_partial_last_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"input": "a"}\n{"input": "b"}\n{"inp')
    assert batch_scan.drop_partial_last_line(str(path)) == len(b'{"inp')
    assert path.read_bytes() == b'{"input": "a"}\n{"input": "b"}\n'
    assert batch_scan.drop_partial_last_line(str(path)) == 0
    path.write_bytes(b'{"input": "only a partial line"')
    assert batch_scan.drop_partial_last_line(str(path)) > 0 and path.read_bytes() == b""
    assert batch_scan.drop_partial_last_line(str(tmp_path / "absent.jsonl")) == 0
    long_tail = b'{"input": "a"}\n' + b"x" * 200_000   # longer than one backwards read
    path.write_bytes(long_tail)
    assert batch_scan.drop_partial_last_line(str(path)) == 200_000 and path.read_bytes() == b'{"input": "a"}\n'


def test_appender_writes_whole_lines_and_holds_a_lock(tmp_path):
    path = tmp_path / "out.jsonl"
    with batch_scan.JsonLinesAppender(str(path)) as appender:
        appender.append(json.dumps({"input": "a"}))
        appender.append(json.dumps({"input": "b", "text": "ü\n"}) + "\n")
        with pytest.raises(batch_scan.OutputInUse, match="another scan"):
            batch_scan.JsonLinesAppender(str(path))
    assert [r["input"] for r in batch_scan.iter_records(str(path))] == ["a", "b"]
    path.write_bytes(path.read_bytes() + b"garbage\n[1, 2]\n")
    bad: list = []
    assert len(list(batch_scan.iter_records(str(path), bad))) == 2 and len(bad) == 2
    batch_scan.JsonLinesAppender(str(path)).close()      # the lock went with the first appender


def test_error_reasons_read_the_message_not_the_file_name():
    assert error_reason(MediaError("pixel art.png: not a readable image"), "pixel art.png") == "unreadable"
    assert error_reason(MediaError("a.png: image is 9000x9000 pixels, more than the 50,000,000-pixel limit"),
                        "a.png") == "too_many_pixels"
    assert error_reason(MediaError("x.mp4: file is 300 MB, more than the 210 MB limit"), "x.mp4") == "too_large"
    assert error_reason(ValueError("boom"), "x.jpg") == "analysis_failed"

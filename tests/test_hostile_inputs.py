"""Hostile and odd inputs through the loaders, the engine (pipeline.analyze_path) and the CLI.

Every input gets either a correct result or a clear refusal: a `MediaError` naming the file (engine,
loaders) or exit status 2 with exactly one `error: <file>: ...` line on stderr and no traceback (CLI).
Refusals of oversized inputs happen before any pixel is decoded, so memory and time stay bounded.

The whole corpus is written into a temporary folder by tests/hostile_corpus.py (no binary test files in git).
The models are the random-weight 64 px models of conftest.py: scores are meaningless, so the tests
check structure (faces found, frame counts, verdict fields), never scores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ImageFile

import media
import predict
import video_processor
from faces import MAX_FACES_PER_IMAGE
from media import MediaError, load_image
from pipeline import analyze_path, build_report
from video_processor import probe_video

from conftest import every_cli_run_uses, write_video
from hostile_corpus import CASES, ERR, NON_ASCII_IMAGE, crafted_png, face_grid, patch_avi

ROOT = Path(__file__).resolve().parents[1]
MAX_SECONDS_PER_INPUT = 300         # generous: the machine is shared; real runs take a second or two


FRAMES = 8


def test_every_corpus_file_has_an_expectation(corpus):
    assert set(corpus) == set(CASES)


@pytest.fixture
def decode_spy(monkeypatch):
    """Counts Pillow decodes and OpenCV frame reads, to prove refusals happen before decoding."""
    counts = {"pil_load": 0, "cv_read": 0, "cv_grab": 0}
    real_load, real_capture = ImageFile.ImageFile.load, cv2.VideoCapture

    def load(self, *a, **kw):
        counts["pil_load"] += 1
        return real_load(self, *a, **kw)

    class CountingCapture:
        def __init__(self, *args):
            self._cap = real_capture(*args)

        def read(self, *a):
            counts["cv_read"] += 1
            return self._cap.read(*a)

        def grab(self):
            counts["cv_grab"] += 1
            return self._cap.grab()

        def __getattr__(self, name):
            return getattr(self._cap, name)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(cv2, "VideoCapture", CountingCapture)
    return counts


@pytest.fixture(scope="module")
def shared_engine_cli(engine):
    """predict.main() builds its own ScoringEngine; hand it the session's (loaded once) instead."""
    with every_cli_run_uses(engine):
        yield engine


def run_cli(args, capsys) -> tuple[int, list[str], list[str]]:
    rc = predict.main(args)
    out, err = capsys.readouterr()
    return rc, [ln for ln in out.splitlines() if ln.strip()], [ln for ln in err.splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n, (c, k) in CASES.items() if c == ERR and Path(n).suffix in media.IMAGE_EXTENSIONS
                                  and n not in ("folder.jpg", "missing.jpg")])
def test_bad_images_are_refused_by_the_loader_before_decoding(corpus, name, decode_spy):
    start = time.perf_counter()
    with pytest.raises(MediaError) as info:
        load_image(corpus[name])
    assert str(corpus[name]) in str(info.value)
    for words in CASES[name][1]:
        assert words in str(info.value)
    assert time.perf_counter() - start < 5
    if "pixel" in str(info.value):          # size limits: refused from the header, nothing decoded
        assert decode_spy["pil_load"] == 0
        assert corpus[name].stat().st_size < 100_000   # a small file declaring a huge picture


def test_loaders_refuse_a_folder_or_a_vanished_file(corpus, tmp_path):
    with pytest.raises(MediaError, match=r"folder\.jpg: cannot read file \(Is a directory\)"):
        load_image(corpus["folder.jpg"])
    with pytest.raises(MediaError, match="missing.jpg: cannot read file"):
        load_image(corpus["missing.jpg"])
    with pytest.raises(MediaError, match="folder.jpg: not a readable video"):
        probe_video(corpus["folder.jpg"])


def test_bytes_uploads_are_refused_the_same_way(corpus):
    with pytest.raises(MediaError, match="upload: file is empty"):
        load_image(b"")
    with pytest.raises(MediaError, match="clip.jpg: image declares more than"):
        load_image(corpus["bomb_100000x100000.png"].read_bytes(), name="clip.jpg")


def test_image_pixel_limit_boundary(monkeypatch):
    """At the limit an image loads; one pixel more is refused (the limit is read at call time)."""
    monkeypatch.setattr(media, "MAX_IMAGE_PIXELS", 100 * 100)
    assert load_image(crafted_png(100, 100)).shape == (100, 100, 3)
    with pytest.raises(MediaError, match="101x100 pixels, more than the 10,000-pixel limit"):
        load_image(crafted_png(101, 100))


@pytest.mark.parametrize("name,mode_check", [
    ("tiny_1x1.png", (1, 1)), ("tiny_10x10.png", (10, 10)), ("grayscale.png", None), ("cmyk.jpg", None),
    ("gray16.png", None), ("rgba.png", None), ("palette.png", None), ("grey_alpha.png", None),
    ("float.tiff", None), ("animated.gif", None), ("exif_rotated.jpg", (400, 512)), ("crowd_30.png", None),
])
def test_odd_images_decode_to_uint8_rgb(corpus, astronaut, name, mode_check):
    arr = load_image(corpus[name])
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and arr.flags.c_contiguous
    if mode_check:
        assert arr.shape[:2] == mode_check
    if name in ("grayscale.png", "gray16.png", "float.tiff", "grey_alpha.png"):
        assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
        assert arr.min() < 30 and arr.max() > 220     # the 16-bit and float ranges are stretched to 8 bits
    if name == "cmyk.jpg":
        assert np.abs(arr.astype(int) - astronaut).mean() < 12
    if name == "animated.gif":                         # the first frame, not the last
        assert np.abs(arr.astype(int) - astronaut).mean() < 20
    if name == "exif_rotated.jpg":
        assert np.abs(arr.astype(int) - astronaut[:400]).mean() < 6


@pytest.mark.parametrize("name", ["zero_frames.avi", "zero_frames.mp4", "truncated.mp4", "text.mp4", "too_big.avi"])
def test_bad_videos_are_refused_by_probe(corpus, name, decode_spy):
    start = time.perf_counter()
    with pytest.raises(MediaError) as info:
        probe_video(corpus[name])
    assert str(corpus[name]) in str(info.value)
    for words in CASES[name][1]:
        assert words in str(info.value)
    assert time.perf_counter() - start < 5
    if name == "too_big.avi":                          # refused from the header, no frame decoded
        assert decode_spy["cv_read"] == decode_spy["cv_grab"] == 0


def test_header_that_overstates_the_frame_count_is_corrected(corpus):
    for name, header in (("lying_count.avi", 1000), ("truncated.avi", 40)):
        info = probe_video(corpus[name])
        assert info.header_frame_count == header
        assert 0 < info.frame_count < header
        frames = video_processor.read_frames(str(corpus[name]), video_processor.sample_frame_indices(info.frame_count, 10))
        assert len(frames) == min(10, info.frame_count)    # every sampled frame exists
    assert probe_video(corpus["lying_count.avi"]).frame_count == 40
    assert 15 <= probe_video(corpus["truncated.avi"]).frame_count <= 21


def test_absurd_header_frame_count_costs_only_a_few_seeks(corpus, tmp_path, decode_spy):
    path = patch_avi(corpus["noise40.avi"], tmp_path / "count_2e31.avi", frame_count=2**31 - 1)
    start = time.perf_counter()
    info = probe_video(path)
    assert info.frame_count == 40 and info.header_frame_count == 2**31 - 1
    assert decode_spy["cv_read"] <= 2 * 32 + 2 and decode_spy["cv_grab"] == 0
    assert time.perf_counter() - start < 10


def test_lying_frame_size_is_replaced_by_the_decoded_size(corpus):
    info = probe_video(corpus["lying_size.avi"])
    assert (info.width, info.height) == (160, 120)


def test_long_video_decodes_only_the_sampled_frames(corpus, engine, decode_spy):
    start = time.perf_counter()
    analysis = analyze_path(str(corpus["long.avi"]), engine, num_frames=FRAMES)
    assert analysis.frame_count == 6000 and analysis.frames_analyzed == FRAMES
    assert analysis.frame_indices == video_processor.sample_frame_indices(6000, FRAMES)
    # One read of the last frame while probing, then one read per sampled frame (far apart: seeks).
    assert decode_spy["cv_read"] <= FRAMES + 1 and decode_spy["cv_grab"] == 0
    assert time.perf_counter() - start < MAX_SECONDS_PER_INPUT


def test_video_frames_larger_than_the_limit_are_skipped(corpus, monkeypatch):
    """A stream whose frames outgrow the header's size (the limit is checked per decoded frame too)."""
    monkeypatch.setattr(video_processor, "MAX_VIDEO_PIXELS_PER_FRAME", 100 * 100)
    path = str(corpus["lying_count.avi"])
    assert [f for _, f in video_processor.iter_frames(path, [0, 1])] == [None, None]


def test_file_names_are_never_interpreted(tmp_path, astronaut, monkeypatch):
    """A name that looks like an image-sequence pattern or an FFmpeg protocol is just a file name."""
    frames = [astronaut[::4, ::4]] * 3
    for name in ("clip%03d.avi", "concat:a.avi", "file:b.avi"):
        folder = tmp_path / name.replace(":", "_").replace("%", "_")
        folder.mkdir()
        write_video(folder / name, frames)
        monkeypatch.chdir(folder)    # a relative name: "concat:a.avi" would be FFmpeg's concat protocol
        info = probe_video(name)
        assert info.frame_count == 3 and (info.width, info.height) == (128, 128), name
        assert len(video_processor.read_frames(name, [0, 1, 2])) == 3


# ---------------------------------------------------------------------------------------------------
# Engine and CLI, every corpus file
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_engine_and_cli_give_a_result_or_one_clear_error(corpus, engine, shared_engine_cli, random_models_dir,
                                                         capsys, name):
    path = corpus[name]
    expect, kind = CASES[name]
    start = time.perf_counter()
    if expect == ERR:
        with pytest.raises(MediaError) as info:
            analyze_path(str(path), engine, num_frames=FRAMES)
        message = str(info.value)
        assert message.startswith(str(path)), message
        for words in kind:
            assert words in message, message
    else:
        analysis = analyze_path(str(path), engine, num_frames=FRAMES)
        report = build_report(analysis, engine)
        assert analysis.kind == kind and analysis.input == str(path)
        json.dumps(report)                                   # JSON-ready
        if expect is not None:
            expect(analysis, report)
    assert time.perf_counter() - start < MAX_SECONDS_PER_INPUT

    rc, out, err = run_cli(["--models-dir", str(random_models_dir), "--json", "--frames", str(FRAMES), str(path)],
                           capsys)
    assert not any("Traceback" in line for line in err)
    if expect == ERR:
        assert rc == predict.EXIT_INPUT_ERROR and out == []
        assert len(err) == 1 and err[0] == f"error: {message}", err
    else:
        assert rc == predict.EXIT_OK and err == [], err
        assert len(out) == 1
        cli_report = json.loads(out[0])
        assert cli_report["input"] == str(path) and cli_report["kind"] == kind
        assert len(cli_report["faces"]) == len(report["faces"])
        assert cli_report["verdict"] == report["verdict"]


def test_truncated_avi_is_analysed_over_the_frames_it_holds(corpus, engine):
    analysis = analyze_path(str(corpus["truncated.avi"]), engine, num_frames=FRAMES)
    assert 15 <= analysis.frame_count <= 21
    assert analysis.frames_analyzed == FRAMES and analysis.frames_failed == []
    assert max(analysis.frame_indices) < analysis.frame_count


def test_crowd_is_capped_at_max_faces_largest_first(astronaut):
    """42 faces in one picture: MAX_FACES_PER_IMAGE (32) are kept, the largest first."""
    from faces import get_face_detector

    grid = face_grid(astronaut, 6, 7)
    cell_h, cell_w = grid.shape[0] // 6, grid.shape[1] // 7
    # The top-left cell holds a closer view of the face (a larger face): it must come first.
    grid[:cell_h, :cell_w] = cv2.resize(astronaut[55:185, 170:280], (cell_w, cell_h), interpolation=cv2.INTER_AREA)
    faces = get_face_detector().detect([grid])[0]
    assert len(faces) == MAX_FACES_PER_IMAGE
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
    x1, y1, x2, y2 = faces[0].box
    assert x2 <= cell_w + 5 and y2 <= cell_h + 5 and areas[0] > 1.3 * areas[-1]


def test_cli_batch_reports_each_bad_file_once_and_goes_on(corpus, shared_engine_cli, random_models_dir, capsys):
    names = ["empty.jpg", "tiny_1x1.png", "bomb_100000x100000.png", "truncated.mp4", "missing.jpg", "no_face.png"]
    rc, out, err = run_cli(["--models-dir", str(random_models_dir), "--frames", "2"] + [str(corpus[n]) for n in names],
                           capsys)
    assert rc == predict.EXIT_INPUT_ERROR
    bad = [n for n in names if CASES[n][0] == ERR]
    assert len(err) == len(bad) and all(line.startswith("error: ") for line in err)
    for n in bad:
        assert sum(str(corpus[n]) in line for line in err) == 1, n
    # The table: a header, then one row per good input, in order.
    assert len(out) == 1 + 2 and "tiny_1x1.png" in out[1] and "no_face.png" in out[2]
    assert all(line.split()[0] == "NO_FACE" for line in out[1:])


@pytest.mark.slow   # a fresh interpreter over the whole corpus (the engine path runs in the fast tier)
def test_cli_subprocess_hostile_batch(corpus, engine, random_models_dir, tmp_path):
    """The real command line: exit 2, one `error:` line per bad file, nothing else on stderr."""
    names = [NON_ASCII_IMAGE, "text.jpg", "truncated.mp4", "huge_20000x20000.png", "zero_frames.avi",
             "lying_count.avi", "bomb_9000x9000.png"]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--models-dir", str(random_models_dir),
                           "--json", "--frames", "4"] + [str(corpus[n]) for n in names],
                          cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", timeout=600)
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == predict.EXIT_INPUT_ERROR, proc.stderr
    assert "Traceback" not in proc.stderr
    bad = [n for n in names if CASES[n][0] == ERR]
    assert len(err) == len(bad), proc.stderr
    for n in bad:
        lines = [ln for ln in err if str(corpus[n]) in ln]
        assert len(lines) == 1 and lines[0].startswith("error: "), (n, proc.stderr)
    reports = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    assert [r["input"] for r in reports] == [str(corpus[NON_ASCII_IMAGE]), str(corpus["lying_count.avi"])]
    assert len(reports[0]["faces"]) >= 1 and reports[1]["frame_count"] == 40

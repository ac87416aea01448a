"""Hostile and odd inputs through the loaders, the engine (pipeline.analyze_path) and the CLI.

Every input gets either a correct result or a clear refusal: a `MediaError` naming the file (engine,
loaders) or exit status 2 with exactly one `error: <file>: ...` line on stderr and no traceback (CLI).
Refusals of oversized inputs happen before any pixel is decoded, so memory and time stay bounded.

The whole corpus is written into a temporary folder by this module (no binary test files in git).
The models are the random-weight 64 px models of conftest.py: scores are meaningless, so the tests
check structure (faces found, frame counts, verdict fields), never scores.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

import media
import predict
import scoring
import video_processor
from media import MAX_FACES_PER_IMAGE, MediaError, load_image
from pipeline import analyze_path, build_report
from video_processor import probe_video

ROOT = Path(__file__).resolve().parents[1]
MAX_SECONDS_PER_INPUT = 300         # generous: the machine is shared; real runs take a second or two
FACE_CROP = (slice(30, 210), slice(150, 300))   # astronaut(): the face with some margin (180 x 150)


# ---------------------------------------------------------------------------------------------------
# Corpus builders
# ---------------------------------------------------------------------------------------------------
def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def crafted_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A 1-bit grey PNG of width x height written row by row (cheap: ~50 KB for 20000 x 20000).

    rows=None writes every row (a valid image); a small number writes only those rows, as a
    decompression bomb's header would: tiny file, huge declared size."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    body = b"".join(comp.compress(row) for _ in range(height if rows is None else rows)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def write_video(path: Path, frames, size=None, fourcc: str = "MJPG", fps: float = 25.0) -> Path:
    """Write RGB frames (an iterable of arrays, or an int: that many noise frames of `size`)."""
    if isinstance(frames, int):
        rng = np.random.default_rng(0)
        w, h = size
        frames = (rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(frames))
    frames = iter(frames)
    first = next(frames, None)
    w, h = size if first is None else (first.shape[1], first.shape[0])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), path
    for frame in ([] if first is None else [first]):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def patch_avi(path: Path, out: Path, *, frame_count: int | None = None, size: tuple[int, int] | None = None) -> Path:
    """Copy an AVI with its header's frame count (avih + strh) or frame size (avih + strf) rewritten."""
    data = bytearray(path.read_bytes())
    avih, strh, strf = data.find(b"avih") + 8, data.find(b"strh") + 8, data.find(b"strf") + 8
    if frame_count is not None:
        data[avih + 16:avih + 20] = struct.pack("<I", frame_count)    # dwTotalFrames
        data[strh + 32:strh + 36] = struct.pack("<I", frame_count)    # dwLength
    if size is not None:
        data[avih + 32:avih + 40] = struct.pack("<II", *size)          # dwWidth, dwHeight
        data[strf + 4:strf + 12] = struct.pack("<ii", *size)           # biWidth, biHeight
    out.write_bytes(bytes(data))
    return out


def exif_rotated_jpeg(upright: np.ndarray, path: Path) -> Path:
    """Store the pixels turned 90 degrees counter-clockwise with EXIF Orientation 6 ("rotate 90 CW to
    display"), as a phone does: only a loader that honours EXIF sees the face upright."""
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif)
    return path


def face_grid(astronaut: np.ndarray, rows: int, cols: int, scale: float = 0.5) -> np.ndarray:
    crop = astronaut[FACE_CROP]
    crop = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return np.concatenate([np.concatenate([crop] * cols, axis=1)] * rows, axis=0)


NON_ASCII_IMAGE = "my phöto – 日本 ü.jpg"
NON_ASCII_VIDEO = "vidéo 100% 日本 %d clip.avi"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, astronaut) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile corpus ü")    # the folder name itself has a space and non-ASCII
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> Path:
        files[name] = d / name
        files[name].write_bytes(data)
        return files[name]

    def save(name: str, img: Image.Image, **kw) -> Path:
        files[name] = d / name
        img.save(files[name], **kw)
        return files[name]

    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, "JPEG", quality=92)
    jpeg = buf.getvalue()
    rgb = Image.fromarray(astronaut)
    # -- images that must be refused
    put("empty.jpg", b"")
    put("text.jpg", b"this is a text file, not a JPEG\n" * 4)
    put("truncated.jpg", jpeg[: len(jpeg) // 2])
    put("huge_20000x20000.png", crafted_png(20000, 20000))
    put("bomb_100000x100000.png", crafted_png(100000, 100000, rows=4))
    put("bomb_9000x9000.png", crafted_png(9000, 9000))      # Pillow only warns here; we refuse
    gif = io.BytesIO()
    Image.fromarray(astronaut[:8, :8]).save(gif, "GIF")
    gif_bomb = bytearray(gif.getvalue())
    gif_bomb[6:10] = struct.pack("<HH", 65535, 65535)          # logical screen 65535 x 65535
    put("bomb_screen.gif", bytes(gif_bomb))
    put("notes.txt", b"not media")
    put("no_extension", jpeg)
    # -- odd images that must work
    save("tiny_1x1.png", Image.fromarray(astronaut[:1, :1]))
    save("tiny_10x10.png", Image.fromarray(astronaut[:10, :10]))
    save("grayscale.png", rgb.convert("L"))
    save("cmyk.jpg", rgb.convert("CMYK"), quality=95)
    save("gray16.png", Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257))
    save("rgba.png", rgb.convert("RGBA"))
    save("palette.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE), transparency=0)
    save("grey_alpha.png", rgb.convert("LA"))
    save("float.tiff", Image.fromarray(np.asarray(rgb.convert("L"), np.float32) / 255.0))
    frames = [Image.fromarray(np.roll(astronaut, 40 * i, axis=1)) for i in range(3)]
    save("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=80, loop=0)
    files["exif_rotated.jpg"] = exif_rotated_jpeg(astronaut[:400], d / "exif_rotated.jpg")
    save("no_face.png", Image.fromarray(np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))))
    save("crowd_30.png", Image.fromarray(face_grid(astronaut, 5, 6)))
    save(NON_ASCII_IMAGE, rgb, quality=92)
    # -- videos
    files["zero_frames.avi"] = write_video(d / "zero_frames.avi", 0, size=(64, 48))
    files["zero_frames.mp4"] = write_video(d / "zero_frames.mp4", 0, size=(64, 48), fourcc="mp4v")
    files["one_frame.avi"] = write_video(d / "one_frame.avi", [astronaut])
    noise40 = files["noise40.avi"] = write_video(d / "noise40.avi", 40, size=(160, 120))
    data = noise40.read_bytes()
    put("truncated.avi", data[: len(data) // 2])               # header says 40, about 20 frames remain
    files["lying_count.avi"] = patch_avi(noise40, d / "lying_count.avi", frame_count=1000)
    files["lying_size.avi"] = patch_avi(noise40, d / "lying_size.avi", size=(30000, 30000))
    mp4 = write_video(d / "ten.mp4", 10, size=(64, 48), fourcc="mp4v").read_bytes()
    put("truncated.mp4", mp4[: len(mp4) // 2])                  # the index (moov) is at the end: lost
    (d / "ten.mp4").unlink()
    put("text.mp4", b"not a video at all\n" * 10)
    files["too_big.avi"] = write_video(d / "too_big.avi", [np.zeros((2448, 4352, 3), np.uint8)])
    files["long.avi"] = write_video(d / "long.avi", (np.full((32, 32, 3), i % 256, np.uint8) for i in range(6000)))
    files[NON_ASCII_VIDEO] = write_video(d / NON_ASCII_VIDEO, [astronaut, astronaut])
    files["folder.jpg"] = d / "folder.jpg"
    files["folder.jpg"].mkdir()
    files["missing.jpg"] = d / "missing.jpg"
    return files


# ---------------------------------------------------------------------------------------------------
# Expectations: a refusal (with words the message must hold) or a check of the analysis
# ---------------------------------------------------------------------------------------------------
def _faces_at_least(n):
    def check(analysis, report):
        assert len(analysis.faces) >= n, f"expected >= {n} faces, found {len(analysis.faces)}"
        assert len(report["faces"]) == len(analysis.faces)
        assert report["verdict"] in ("REAL", "FAKE")
        assert set(report["models_used"]) == set(scoring.MODEL_KEYS)
    return check


def _no_face(width, height):
    def check(analysis, report):
        assert analysis.faces == [] and report["verdict"] == "NO_FACE" and report["fake_probability"] is None
        assert (report["width"], report["height"]) == (width, height)
    return check


def _exif_upright(analysis, report):
    # Stored 400 wide x 512 tall; shown (and analysed) upright: 512 wide x 400 tall, face found where
    # it is in the upright picture (the astronaut's face is around x 180-270, y 60-175).
    assert (analysis.width, analysis.height) == (512, 400)
    assert len(analysis.faces) == 1
    x1, y1, x2, y2 = analysis.faces[0].face.box
    assert 150 < (x1 + x2) / 2 < 300 and 60 < (y1 + y2) / 2 < 180, analysis.faces[0].face.box


def _crowd(analysis, report):
    assert 20 <= len(analysis.faces) <= MAX_FACES_PER_IMAGE, len(analysis.faces)


def _video(frame_count, frames_analyzed, faces_min=0, header=None):
    def check(analysis, report):
        assert analysis.kind == "video" and report["kind"] == "video"
        assert analysis.frame_count == frame_count
        assert analysis.frames_analyzed == frames_analyzed and analysis.frames_failed == []
        assert len(analysis.faces) >= faces_min
        assert len(report["statistics"]) > 0 and isinstance(report["persons"], list)
    return check


ERR = "error"
CASES = {
    # name: (ERR, words in the message) or (check(analysis, report), kind)
    "empty.jpg": (ERR, ["file is empty"]),
    "text.jpg": (ERR, ["not a readable image"]),
    "truncated.jpg": (ERR, ["truncated or corrupt"]),
    "huge_20000x20000.png": (ERR, ["50,000,000", "pixels"]),
    "bomb_100000x100000.png": (ERR, ["50,000,000", "pixels"]),
    "bomb_9000x9000.png": (ERR, ["9000x9000", "50,000,000-pixel limit"]),
    "bomb_screen.gif": (ERR, ["50,000,000", "pixels"]),
    "notes.txt": (ERR, ["unsupported file type '.txt'"]),
    "no_extension": (ERR, ["unsupported file type '(no extension)'"]),
    "folder.jpg": (ERR, ["is a folder"]),
    "missing.jpg": (ERR, ["no such file"]),
    "tiny_1x1.png": (_no_face(1, 1), "image"),
    "tiny_10x10.png": (_no_face(10, 10), "image"),
    "grayscale.png": (_faces_at_least(1), "image"),
    "cmyk.jpg": (_faces_at_least(1), "image"),
    "gray16.png": (_faces_at_least(1), "image"),
    "rgba.png": (_faces_at_least(1), "image"),
    "palette.png": (_faces_at_least(1), "image"),
    "grey_alpha.png": (_faces_at_least(1), "image"),
    "float.tiff": (_faces_at_least(1), "image"),
    "animated.gif": (_faces_at_least(1), "image"),
    "exif_rotated.jpg": (_exif_upright, "image"),
    "no_face.png": (_no_face(320, 240), "image"),
    "crowd_30.png": (_crowd, "image"),
    NON_ASCII_IMAGE: (_faces_at_least(1), "image"),
    "zero_frames.avi": (ERR, ["no decodable frames"]),
    "zero_frames.mp4": (ERR, ["not a readable video"]),
    "truncated.mp4": (ERR, ["not a readable video"]),
    "text.mp4": (ERR, ["not a readable video"]),
    "too_big.avi": (ERR, ["4352x2448", "pixel-per-frame limit"]),
    "one_frame.avi": (_video(1, 1, faces_min=1), "video"),
    "truncated.avi": (None, "video"),          # checked in its own test: the count is corrected
    "noise40.avi": (_video(40, 8), "video"),
    "lying_count.avi": (_video(40, 8), "video"),
    "lying_size.avi": (_video(40, 8), "video"),
    "long.avi": (_video(6000, 8), "video"),
    NON_ASCII_VIDEO: (_video(2, 2, faces_min=2), "video"),
}
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
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scoring, "ScoringEngine", lambda *args, **kwargs: engine)
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

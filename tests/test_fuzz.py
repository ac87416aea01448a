"""Property tests: random and mutated bytes never crash the loaders or the CLI.

Allowed outcomes only: a decoded result, or a MediaError (loaders, engine), or exit status 2 with a
single `error: <file>: ...` line (CLI). Anything else (another exception, a traceback, a hang) fails.
Examples are bounded (max_examples, small inputs) and derandomised, so the suite stays quick and
reproducible; set DFSTUDIO_FUZZ_EXAMPLES=500 for a longer local hunt with fresh randomness.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data as skdata

import predict
from media import MediaError, load_image
from video_processor import iter_frames, probe_video, sample_frame_indices

from conftest import every_cli_run_uses

pytestmark = pytest.mark.slow   # `make test-fast` leaves the fuzzers out

LONG = int(os.environ.get("DFSTUDIO_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int):
    return settings(max_examples=LONG or examples, deadline=None, derandomize=not LONG, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------------------
# Seeds: small valid files, built once at import (milliseconds)
# ---------------------------------------------------------------------------------------------------
def _image_seeds() -> dict[str, bytes]:
    small = np.ascontiguousarray(skdata.astronaut()[::4, ::4])     # 128 x 128, the face ~25 px
    img = Image.fromarray(small)
    seeds = {}
    for fmt, ext, kw in (("JPEG", ".jpg", {"quality": 85}), ("PNG", ".png", {}), ("GIF", ".gif", {}),
                         ("WEBP", ".webp", {"quality": 80}), ("TIFF", ".tiff", {}), ("BMP", ".bmp", {})):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        seeds[ext] = buf.getvalue()
    buf = io.BytesIO()
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(buf, "JPEG", quality=85, exif=exif)
    seeds[".exif.jpg"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 257)).save(buf, "PNG")
    seeds[".16.png"] = buf.getvalue()
    return seeds


def _video_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(6)]
    seeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ext, fourcc in ((".avi", "MJPG"), (".mp4", "mp4v")):
            path = os.path.join(tmp, "seed" + ext)
            writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 10.0, (64, 48))
            for f in frames:
                writer.write(f)
            writer.release()
            seeds[ext] = Path(path).read_bytes()
    return seeds


IMAGE_SEEDS = _image_seeds()
VIDEO_SEEDS = _video_seeds()


@st.composite
def mutated(draw, seeds: dict[str, bytes]):
    """(extension, bytes): a seed with 1-8 random edits (bit flips, overwrites, cuts, insertions)."""
    ext = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[ext])
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "byte", "int", "cut", "insert", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if not data:
            break
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "int":          # a header field set to an extreme value
            value = draw(st.sampled_from([0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            width = draw(st.sampled_from([1, 2, 4]))
            order = draw(st.sampled_from(["little", "big"]))
            data[pos:pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, order)
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[pos:]
    return "." + ext.rsplit(".", 1)[-1], bytes(data)          # ".exif.jpg" -> ".jpg"


def _check_image_result(arr) -> None:
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert arr.shape[0] >= 1 and arr.shape[1] >= 1


# ---------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------
@fuzz_settings(50)
@given(st.binary(max_size=4096))
def test_random_bytes_to_load_image(blob):
    try:
        _check_image_result(load_image(blob, name="fuzz.bin"))
    except MediaError as exc:
        assert str(exc).startswith("fuzz.bin: ") or (not blob and "empty" in str(exc))


@fuzz_settings(50)
@given(mutated(IMAGE_SEEDS))
def test_mutated_images_to_load_image(sample):
    ext, blob = sample
    start = time.perf_counter()
    try:
        _check_image_result(load_image(blob, name="fuzz" + ext))
    except MediaError as exc:
        assert str(exc).startswith("fuzz" + ext + ": ")
    assert time.perf_counter() - start < 20


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _probe_and_read(path: Path) -> None:
    start = time.perf_counter()
    try:
        info = probe_video(path)
    except MediaError as exc:
        assert str(exc).startswith(str(path) + ": ")
        return
    assert info.frame_count >= 1 and info.width >= 0 and info.height >= 0
    indices = sample_frame_indices(info.frame_count, 4)
    got = list(iter_frames(str(path), indices))
    assert [i for i, _ in got] == indices
    for _, frame in got:
        assert frame is None or (frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3)
    assert time.perf_counter() - start < 30


@fuzz_settings(40)
@given(mutated(VIDEO_SEEDS))
def test_mutated_videos_to_probe_and_iter_frames(fuzz_dir, sample):
    ext, blob = sample
    path = fuzz_dir / f"mutated{ext}"
    path.write_bytes(blob)
    _probe_and_read(path)


@fuzz_settings(30)
@given(st.binary(max_size=2048), st.sampled_from([".mp4", ".avi", ".mkv", ".webm", ".mov"]))
def test_random_bytes_to_probe_video(fuzz_dir, blob, ext):
    path = fuzz_dir / f"random{ext}"
    path.write_bytes(blob)
    _probe_and_read(path)


# ---------------------------------------------------------------------------------------------------
# CLI, in process
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_engine(engine):
    """predict.main() would load the models again for every example; give it the session's engine."""
    with every_cli_run_uses(engine):
        yield engine


@fuzz_settings(30)
@given(st.one_of(mutated(IMAGE_SEEDS), mutated(VIDEO_SEEDS),
                 st.tuples(st.sampled_from([".jpg", ".png", ".mp4"]), st.binary(max_size=512))))
def test_cli_on_mutated_files(shared_engine, random_models_dir, fuzz_dir, sample):
    ext, blob = sample
    path = fuzz_dir / f"cli input{ext}"
    path.write_bytes(blob)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = predict.main(["--models-dir", str(random_models_dir), "--json", "--frames", "3", str(path)])
    out_lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    err_lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    if rc == predict.EXIT_OK:
        assert err_lines == [] and len(out_lines) == 1
        report = json.loads(out_lines[0])
        assert report["input"] == str(path) and report["verdict"] in ("REAL", "FAKE", "NO_FACE")
    else:
        assert rc == predict.EXIT_INPUT_ERROR and out_lines == []
        assert len(err_lines) == 1 and err_lines[0].startswith(f"error: {path}: "), err_lines
        # A MediaError's message, not predict's catch-all for unexpected exceptions.
        assert "could not be analysed" not in err_lines[0], err_lines

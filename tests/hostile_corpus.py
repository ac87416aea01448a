"""The hostile-input corpus (written into a temporary folder, no binary test files in git) and what
each file must give: a refusal with given words, or a check of its analysis and report.

Used through the `corpus` fixture of conftest.py by tests/test_hostile_inputs.py and tests/test_api.py.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

import scoring
from conftest import write_video
from faces import MAX_FACES_PER_IMAGE

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


def write_corpus(d: Path, astronaut: np.ndarray) -> dict[str, Path]:
    """Every hostile and odd input, written into folder `d` (the `corpus` fixture of conftest.py)."""
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


def _video(frame_count, frames_analyzed, faces_min=0):
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

"""Safe, bounded loading of user images; the limits every entry point (CLI, app, engine) shares.

Every failure becomes a `MediaError` whose message names the file and the reason, so callers can
print one line (CLI) or one error box (app) instead of a traceback.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# ---- Limits (documented in README "Limits and safety") -------------------------------------------
MAX_UPLOAD_BYTES = 200 * 1024 * 1024      # also .streamlit/config.toml maxUploadSize (MB)
MAX_IMAGE_PIXELS = 50_000_000             # images larger than this are refused before decoding
MAX_VIDEO_PIXELS_PER_FRAME = 4096 * 2304  # 4K-ish; larger videos are refused
MAX_VIDEO_FRAMES_ANALYSED = 300           # the app's slider maximum, also the CLI's
MIN_VIDEO_FRAMES_ANALYSED = 1             # the CLI and the API refuse fewer; analyze_video clamps into the range
DEFAULT_VIDEO_FRAMES_ANALYSED = 32        # the CLI's and the HTTP API's default (the app's slider starts at 100)
# Advisory models (not voters in the ensemble) score at most this many faces of each person in a video,
# spread evenly over the track: they cannot change a verdict, yet Xception and Swin were 80 % of the
# models' time on a 100-frame video (docs/performance.md). pipeline.advisory_sample picks the faces.
ADVISORY_FACES_PER_TRACK = 16
# Between analysed frames at most FOLLOW_MAX_GAP_S apart, faces are followed from the previous frame
# (MTCNN's last two stages on its boxes, faces.FaceDetector.follow) instead of searched in full; every
# FULL_SEARCH_EVERY-th frame, and any frame where a followed face is lost, is searched in full, so a
# face that enters the picture is found within FULL_SEARCH_EVERY - 1 frames (docs/performance.md).
FOLLOW_MAX_GAP_S = 0.25
FULL_SEARCH_EVERY = 4
# Face-finding limits (MAX_FACES_PER_IMAGE, DETECTION_MAX_SIDE) are the detector's: see faces.py.

# The accepted file types, for every entry point (CLI, app, HTTP API, batch scans, evaluation).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
ACCEPTED_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS

# Pillow's own bomb guard raises above 2x this value; keep it aligned with ours.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# Between 1x and 2x Pillow only warns (on stderr); load_image refuses those images itself right after
# opening them, with a MediaError naming the file, so the warning would only be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class MediaError(Exception):
    """An input that cannot be analysed; the message is meant for the user."""


def type_list(extensions) -> str:
    """'jpg, jpeg, png, ...': extensions for a help text, in their list's order."""
    return ", ".join(e.lstrip(".") for e in extensions)


def kind_of(path: str | os.PathLike) -> str:
    """'image' or 'video' from the extension; MediaError for anything else."""
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    raise MediaError(f"{path}: unsupported file type {ext or '(no extension)'!r}; "
                     f"images: {', '.join(sorted(IMAGE_EXTENSIONS))}; videos: {', '.join(sorted(VIDEO_EXTENSIONS))}")


def check_file_size(path: str | os.PathLike) -> int:
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise MediaError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise MediaError(f"{path}: file is empty")
    if size > MAX_UPLOAD_BYTES:
        raise MediaError(f"{path}: file is {size / 1e6:.0f} MB, more than the {MAX_UPLOAD_BYTES / 1e6:.0f} MB limit")
    return size


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode (L, LA, P, RGBA, CMYK, I;16, F, ...) -> uint8 RGB (H, W, 3), upright per EXIF."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency on white, as a browser shows it.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def load_image(source: str | os.PathLike | bytes, name: str | None = None) -> np.ndarray:
    """Decode an image file or bytes to uint8 RGB, bounded in pixels; first frame of an animation."""
    label = name or (str(source) if not isinstance(source, bytes) else "upload")
    if isinstance(source, bytes):
        if not source:
            raise MediaError(f"{label}: file is empty")
        if len(source) > MAX_UPLOAD_BYTES:
            raise MediaError(f"{label}: larger than the {MAX_UPLOAD_BYTES / 1e6:.0f} MB limit")
        fh = io.BytesIO(source)
    else:
        check_file_size(source)
        try:
            fh = open(source, "rb")
        except OSError as exc:  # a folder, no permission, or gone since the size check
            raise MediaError(f"{label}: cannot read file ({exc.strerror or exc})") from None
    try:
        with fh:
            try:
                img = Image.open(fh)
            except UnidentifiedImageError:
                raise MediaError(f"{label}: not a readable image (unknown or corrupt format)") from None
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise MediaError(f"{label}: image is {width}x{height} pixels, more than the "
                                 f"{MAX_IMAGE_PIXELS:,}-pixel limit")
            if min(width, height) < 1:
                raise MediaError(f"{label}: image has no pixels")
            try:
                img.seek(0)
                img.load()
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise MediaError(f"{label}: image data is truncated or corrupt ({exc})") from None
            return to_rgb_array(img)
    except Image.DecompressionBombError:
        raise MediaError(f"{label}: image declares more than {MAX_IMAGE_PIXELS:,} pixels "
                         f"(decompression bomb guard)") from None
    except MediaError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise MediaError(f"{label}: image could not be decoded ({type(exc).__name__}: {exc})") from None

"""Video input: bounded probing, decoding only the sampled frames, and face tracks across frames.

OpenCV's frame count can be wrong (GUIDE.md section 7): frames are read by index, a failed read is
recorded instead of raised, a header that reports no frames is counted by a bounded scan, and a
header that reports more frames than the file holds is corrected by a bounded search for the last
readable frame.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np

from media import MAX_VIDEO_PIXELS_PER_FRAME, MediaError, check_file_size

# FFmpeg and OpenCV print their own diagnostics for corrupt files ("moov atom not found", "[ WARN ...]")
# on stderr; the MediaError raised here says it once, in words. Users can still opt in via the env.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg is first used


def quiet_opencv_log(cv) -> bool:
    """Lower OpenCV's own log to errors; False where this OpenCV offers no way to.

    requirements.txt allows OpenCV 4.10 and later, and the call moved between the two: OpenCV 4.x has
    `cv2.setLogLevel(int)` only, 5.x has `cv2.utils.logging.setLogLevel` only."""
    logging_module = getattr(getattr(cv, "utils", None), "logging", None)
    if logging_module is not None and hasattr(logging_module, "setLogLevel"):
        logging_module.setLogLevel(logging_module.LOG_LEVEL_ERROR)
        return True
    if hasattr(cv, "setLogLevel"):
        cv.setLogLevel(2)  # OpenCV 4.x: 2 = LOG_LEVEL_ERROR (cv::utils::logging::LogLevel)
        return True
    return False


if "OPENCV_LOG_LEVEL" not in os.environ:
    quiet_opencv_log(cv2)

MAX_SCAN_FRAMES = 20_000      # frames counted by decoding when the header gives no count
SEQUENTIAL_GAP = 12           # closer sampled frames are reached by grabbing forward, not seeking
TRACK_MIN_IOU = 0.3


@dataclass
class VideoInfo:
    path: str
    frame_count: int      # frames that can be addressed (header, or counted when the header lies)
    fps: float
    width: int
    height: int
    header_frame_count: int

    @property
    def duration_s(self) -> float | None:
        return self.frame_count / self.fps if self.fps > 0 else None


def sample_frame_indices(total: int, n: int) -> list[int]:
    """n indices spread evenly over [0, total), each at the centre of its segment; fewer if total < n."""
    if total <= 0 or n <= 0:
        return []
    n = min(n, total)
    return sorted({int((i + 0.5) * total / n) for i in range(n)})


def _open(path: str) -> cv2.VideoCapture:
    # FFmpeg only, on an absolute path: no fallback to OpenCV's image-sequence reader (which reads a
    # name holding "%d" as a pattern) or its noisy AVI parser, and no "proto:" prefix as an FFmpeg
    # protocol.
    target = os.path.abspath(path)
    if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
        cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG)
    else:  # pragma: no cover - OpenCV builds without FFmpeg
        cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        raise MediaError(f"{path}: not a readable video (unknown or corrupt container)")
    return cap


def _check_frame_size(path: str, width: int, height: int) -> None:
    if width * height > MAX_VIDEO_PIXELS_PER_FRAME:
        raise MediaError(f"{path}: video is {width}x{height}, more than the "
                         f"{MAX_VIDEO_PIXELS_PER_FRAME:,}-pixel-per-frame limit")


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open a video and check its size limits; counts frames by decoding when the header has none."""
    path = str(path)
    check_file_size(path)
    cap = _open(path)
    try:
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        header = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        _check_frame_size(path, width, height)
        if header <= 0:
            count = 0
            while count < MAX_SCAN_FRAMES and cap.grab():
                count += 1
        else:
            count = _count_readable(cap, header)
        if count <= 0:
            raise MediaError(f"{path}: video has no decodable frames")
        if width <= 0 or height <= 0:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = cap.read()
            if not ok or frame is None:
                raise MediaError(f"{path}: video has no decodable frames")
            height, width = frame.shape[:2]
            _check_frame_size(path, width, height)
        return VideoInfo(path, count, fps if np.isfinite(fps) else 0.0, width, height, header)
    finally:
        cap.release()


def _readable(cap: cv2.VideoCapture, index: int) -> bool:
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    return bool(ok) and frame is not None


def _count_readable(cap: cv2.VideoCapture, header: int) -> int:
    """Frames that can be read when the header claims `header`: the header itself when its last frame
    reads; otherwise (truncated file, patched or estimated count) the last readable frame is found by
    galloping back from the end and bisecting, O(log header) seeks instead of decoding everything."""
    if _readable(cap, header - 1):
        return header
    hi, step = header - 1, 1          # hi: an index known to be unreadable
    lo = hi - step
    while lo > 0 and not _readable(cap, lo):
        hi, step = lo, step * 2
        lo = hi - step
    if lo <= 0:
        lo = 0
        if not _readable(cap, 0):
            return 0
    while hi - lo > 1:               # invariant: lo readable, hi not
        mid = (lo + hi) // 2
        if _readable(cap, mid):
            lo = mid
        else:
            hi = mid
    return lo + 1


def iter_frames(path: str, indices: list[int]) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yield (index, RGB frame or None when it could not be decoded) for sorted indices.

    Near frames are reached by grab() (cheap: no colour conversion), far ones by seeking; only the
    wanted frames are ever converted to RGB. After a failed seek we try once to read on sequentially.
    """
    cap = _open(path)
    try:
        position = 0
        for index in indices:
            if index < position or index - position > SEQUENTIAL_GAP:
                cap.set(cv2.CAP_PROP_POS_FRAMES, index)
                position = index
            ok = True
            while position < index and ok:
                ok = cap.grab()
                position += 1
            ok, frame = cap.read() if ok else (False, None)
            position += 1
            if not ok or frame is None or frame.ndim != 3 or \
                    frame.shape[0] * frame.shape[1] > MAX_VIDEO_PIXELS_PER_FRAME:  # size changed mid-stream
                yield index, None
                continue
            yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def read_frames(path: str, indices: list[int]) -> dict[int, np.ndarray]:
    """Decoded RGB frames by index (frames that fail to decode are left out)."""
    return {i: f for i, f in iter_frames(path, indices) if f is not None}


# ---------------------------------------------------------------------------------------------------
def box_iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw, ih = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def assign_tracks(boxes_per_frame: list[list[tuple]], min_iou: float = TRACK_MIN_IOU,
                  max_gap: int = 5) -> list[list[int]]:
    """Greedy IoU tracking: the id of each box, frame by frame, so each person is judged separately.

    A box joins the track whose last box (seen at most `max_gap` analysed frames ago) overlaps it
    most; faces in one frame never share a track.
    """
    tracks: list[dict] = []   # {"box", "last"}
    out: list[list[int]] = []
    for t, boxes in enumerate(boxes_per_frame):
        ids = [-1] * len(boxes)
        pairs = sorted(((box_iou(b, tr["box"]), bi, ti) for bi, b in enumerate(boxes)
                        for ti, tr in enumerate(tracks) if t - tr["last"] <= max_gap), reverse=True)
        used_tracks = set()
        for iou, bi, ti in pairs:
            if iou < min_iou:
                break
            if ids[bi] == -1 and ti not in used_tracks:
                ids[bi] = ti
                used_tracks.add(ti)
        for bi, b in enumerate(boxes):
            if ids[bi] == -1:
                tracks.append({"box": b, "last": t})
                ids[bi] = len(tracks) - 1
            else:
                tracks[ids[bi]].update(box=b, last=t)
        out.append(ids)
    return out


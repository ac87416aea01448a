"""Frame sampling, decoding only what is sampled, and face tracks."""
from types import SimpleNamespace

import numpy as np

from video_processor import assign_tracks, box_iou, iter_frames, probe_video, quiet_opencv_log, sample_frame_indices


def test_sample_indices_are_even_and_bounded():
    assert sample_frame_indices(100, 10) == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]
    assert sample_frame_indices(3, 10) == [0, 1, 2]
    assert sample_frame_indices(0, 10) == []


def test_opencv_log_is_quietened_through_either_api():
    """requirements.txt allows OpenCV 4.x (cv2.setLogLevel) and 5.x (cv2.utils.logging); importing
    video_processor failed on 4.x before session 23."""
    calls = []
    five = SimpleNamespace(utils=SimpleNamespace(logging=SimpleNamespace(
        LOG_LEVEL_ERROR=2, setLogLevel=lambda level: calls.append(("5.x", level)))))
    four = SimpleNamespace(utils=SimpleNamespace(), setLogLevel=lambda level: calls.append(("4.x", level)))
    assert quiet_opencv_log(five) and quiet_opencv_log(four)
    assert calls == [("5.x", 2), ("4.x", 2)]
    assert not quiet_opencv_log(SimpleNamespace(utils=SimpleNamespace()))


def test_iter_frames_returns_the_requested_frames(tmp_path):
    frames = np.zeros((40, 48, 64, 3), np.uint8)
    for i in range(40):
        frames[i, :, :, 0] = i * 6   # frame index encoded in the red channel
    path = tmp_path / "v.avi"
    import cv2
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    info = probe_video(path)
    assert info.frame_count == 40 and (info.width, info.height) == (64, 48)
    got = dict(iter_frames(str(path), [1, 2, 30, 39]))
    for index, frame in got.items():
        assert abs(float(frame[..., 0].mean()) - index * 6) < 4, index


def test_two_people_get_two_tracks():
    left = [(10 + t, 10, 60 + t, 70) for t in range(5)]
    right = [(200 - t, 15, 250 - t, 80) for t in range(5)]
    per_frame = [[left[t], right[t]] if t % 2 == 0 else [right[t], left[t]] for t in range(5)]
    ids = assign_tracks(per_frame)
    assert ids[0] == [0, 1]
    assert all(ids[t] == ([0, 1] if t % 2 == 0 else [1, 0]) for t in range(5))


def test_when_a_frame_is_searched_in_full():
    """Follow only from a frame with faces, close in time (FOLLOW_MAX_GAP_S), and search in full at
    least every FULL_SEARCH_EVERY frames; an unknown frame rate always searches."""
    from faces import Face
    from media import FOLLOW_MAX_GAP_S, FULL_SEARCH_EVERY
    from pipeline import search_in_full

    face = [Face(box=(0, 0, 10, 10), probability=1.0)]
    assert search_in_full(None, 0, 25.0, 0)
    assert search_in_full((10, []), 12, 25.0, 0)
    assert not search_in_full((10, face), 12, 25.0, 0)
    assert search_in_full((10, face), 10 + int(25 * FOLLOW_MAX_GAP_S) + 1, 25.0, 0)
    assert not search_in_full((10, face), 12, 25.0, FULL_SEARCH_EVERY - 2)
    assert search_in_full((10, face), 12, 25.0, FULL_SEARCH_EVERY - 1)
    assert search_in_full((10, face), 12, 0.0, 0)


def _faces_by_frame(analysis) -> dict[int, list]:
    out = {i: [] for i in analysis.frame_indices}
    for r in analysis.faces:
        out[r.face.frame].append(r.face)
    return out


def test_followed_faces_match_the_full_search_and_new_faces_are_found(engine, astronaut, tmp_path):
    """A face drifting through 16 close frames, a second one entering at frame 6: followed, every
    frame has the faces the full search finds (boxes IoU > 0.8) except that the newcomer may be found
    up to FULL_SEARCH_EVERY - 1 frames late; only a quarter of the frames are searched in full."""
    import cv2

    import pipeline
    from conftest import write_video
    from media import FULL_SEARCH_EVERY

    head = cv2.resize(astronaut[20:260, 120:330], (105, 120), interpolation=cv2.INTER_AREA)

    def frame(i: int) -> np.ndarray:
        canvas = np.full((270, 480, 3), 110, np.uint8)
        canvas[40:160, 30 + 3 * i:135 + 3 * i] = head
        if i >= 6:
            canvas[120:240, 330:435] = head
        return canvas

    video = write_video(tmp_path / "two.mp4", (frame(i) for i in range(16)), fourcc="mp4v", fps=25.0)
    followed = pipeline.analyze_video(str(video), engine, num_frames=16)
    searched = pipeline.analyze_video(str(video), engine, num_frames=16, follow_faces=False)
    # Full searches at frames 0, 4, 8 and 12 only: no followed face was lost on the way.
    assert searched.full_face_searches == 16 and followed.full_face_searches == 16 // FULL_SEARCH_EVERY
    got, want = _faces_by_frame(followed), _faces_by_frame(searched)
    assert [len(want[i]) for i in range(16)] == [1] * 6 + [2] * 10
    first_with_both = min(i for i in range(16) if len(got[i]) == 2)
    assert 6 <= first_with_both <= 6 + FULL_SEARCH_EVERY - 1
    for i in range(16):
        if i < 6 or i >= first_with_both:
            assert len(got[i]) == len(want[i]), i
        for face in got[i]:
            assert max(box_iou(face.box, w.box) for w in want[i]) > 0.8, i
    report = pipeline.build_report(followed, engine)
    assert report["frames_searched_in_full"] == followed.full_face_searches and report["people"] == 2

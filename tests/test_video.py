"""Frame sampling, decoding only what is sampled, and face tracks."""
import numpy as np

from video_processor import assign_tracks, iter_frames, probe_video, sample_frame_indices


def test_sample_indices_are_even_and_bounded():
    assert sample_frame_indices(100, 10) == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]
    assert sample_frame_indices(3, 10) == [0, 1, 2]
    assert sample_frame_indices(0, 10) == []


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

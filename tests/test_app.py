"""The Streamlit app, driven headless by streamlit.testing.v1.AppTest on random-weight models.

Covers photo mode (astronaut: one face), the no-face case (a plain gradient), a broken file, video
mode (a short synthetic clip of astronaut frames), the no-models message, and that moving the
threshold or switching detectors never re-runs the analysis.

Uploads go through the real st.file_uploader where AppTest can set its value (recent Streamlit),
else through the app's test-only input hook (DFSTUDIO_TEST_HOOKS=1 + session_state["test_input_path"]),
which the no-face test always uses.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline
from conftest import make_drifting_video

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 600


def texts(at, *kinds) -> str:
    """All text of the given element kinds, joined (for substring checks)."""
    out = []
    for kind in kinds:
        for el in getattr(at, kind):
            out.append(str(getattr(el, "value", "") or getattr(el, "body", "")))
            label = getattr(el, "label", None)
            if label:
                out.append(str(label))
    return "\n".join(out)


def image_captions(at) -> str:
    return "\n".join(c for el in at.image for c in el.captions)


def metric(at, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return m.value
    raise AssertionError(f"no metric {label!r}; have {[m.label for m in at.metric]}")


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.fixture()
def app_env(monkeypatch, random_models_dir):
    monkeypatch.setenv("DFSTUDIO_MODELS_DIR", str(random_models_dir))
    monkeypatch.setenv("DFSTUDIO_TEST_HOOKS", "1")
    return random_models_dir


@pytest.fixture()
def counted(monkeypatch):
    """Counts calls of pipeline.analyze_image / analyze_video (the app looks them up at call time)."""
    calls = {"image": 0, "video": 0, "video_paths": []}
    real_image, real_video = pipeline.analyze_image, pipeline.analyze_video

    def image(*args, **kwargs):
        calls["image"] += 1
        return real_image(*args, **kwargs)

    def video(path, *args, **kwargs):
        calls["video"] += 1
        calls["video_paths"].append(path)
        assert os.path.exists(path)
        return real_video(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "analyze_image", image)
    monkeypatch.setattr(pipeline, "analyze_video", video)
    return calls


@pytest.fixture(scope="module")
def astronaut_bytes(astronaut) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def gradient_png(tmp_path_factory) -> Path:
    x = np.linspace(0, 255, 320, dtype=np.float32)
    img = np.stack([np.tile(x, (240, 1)), np.tile(x[::-1], (240, 1)), np.full((240, 320), 128.0)], axis=-1)
    path = tmp_path_factory.mktemp("noface") / "gradient.png"
    Image.fromarray(img.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory, astronaut) -> Path:
    return make_drifting_video(tmp_path_factory.mktemp("video") / "clip.mp4", astronaut)


def upload(at, name: str, data: bytes, mime: str, tmp_dir: Path):
    """Upload through st.file_uploader where AppTest supports it (Streamlit >= 1.50 or so); otherwise
    through the app's test-only input hook, with the bytes written to a file of that name."""
    uploaders = getattr(at, "file_uploader", None)
    if uploaders is not None and len(uploaders) and hasattr(uploaders[0], "set_value"):
        uploaders[0].set_value((name, data, mime))
    else:
        path = tmp_dir / name
        path.write_bytes(data)
        at.session_state["test_input_path"] = str(path)
    return at.run()


def new_app():
    from streamlit.testing.v1 import AppTest
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


# ---------------------------------------------------------------------------------------------------
def test_sidebar_and_start_page(app_env):
    at = new_app().run()
    assert_clean(at)
    toggles = {t.key: t for t in at.sidebar.toggle}
    assert set(toggles) == {f"use_{k}" for k in ("xception", "efficientnet", "swin", "cross_attention",
                                                 "cnn_transformer")} | {"fast"}
    assert all(t.value for k, t in toggles.items() if k.startswith("use_")) and not toggles["fast"].value
    captions = texts(at.sidebar, "caption")
    assert captions.count("loaded") == 5 and "input 64 px" in captions and "test AUC 0.500" in captions
    threshold = at.slider(key="threshold")
    assert threshold.value == pytest.approx(0.5)
    assert at.radio(key="mode").value == "Photo"
    assert "Upload a photo" in texts(at, "info")


def test_photo_mode_one_face_and_no_rerun_on_settings(app_env, counted, astronaut_bytes, tmp_path):
    at = new_app().run()
    upload(at, "astronaut.jpg", astronaut_bytes, "image/jpeg", tmp_path)
    assert_clean(at)
    assert counted["image"] == 1
    subheaders = [s.value for s in at.subheader]
    assert "Face 1" in subheaders and "Face 2" not in subheaders
    assert metric(at, "Faces found") == "1"
    verdict = metric(at, "Verdict")
    assert verdict in ("FAKE", "REAL")
    boxes = texts(at, "error", "success")
    assert f"Verdict: {verdict}" in boxes and "Ensemble:" in boxes
    # One card per detector for the face, each with a probability.
    titles = {"Xception", "EfficientNet", "Swin Transformer", "Cross-Attention", "CNN-Transformer"}
    assert titles <= {m.label for m in at.metric}
    for m in at.metric:
        if m.label in titles:
            assert m.value.endswith("%")
    # The annotated photo and the crop are shown; downloads are offered.
    assert len(at.image) >= 1
    labels = [b.label for b in at.get("download_button")]
    assert any("JSON" in lb for lb in labels) and any("CSV" in lb for lb in labels)

    # Threshold 0: every face is FAKE; threshold 1: REAL. No new analysis.
    at.slider(key="threshold").set_value(0.0).run()
    assert_clean(at)
    assert metric(at, "Verdict") == "FAKE"
    at.slider(key="threshold").set_value(1.0).run()
    assert metric(at, "Verdict") == "REAL"
    # Switching detectors off changes the cards, not the analysis.
    at.toggle(key="use_swin").set_value(False).run()
    at.toggle(key="use_xception").set_value(False).run()
    assert_clean(at)
    labels = {m.label for m in at.metric}
    assert "Swin Transformer" not in labels and "Xception" not in labels and "EfficientNet" in labels
    assert counted["image"] == 1

    # Explanations: computed only on request.
    assert not any(b.key == "xp_go_photo" and b.value for b in at.button)
    images_before = len(at.image)
    at.selectbox(key="xp_model_photo").set_value("efficientnet")
    at.button(key="xp_go_photo").click().run()
    assert_clean(at)
    assert len(at.image) >= images_before + 2 + 3       # crop, heat map, one overlay per stage
    captions = image_captions(at)
    assert "Heat map: EfficientNet" in captions and "blocks.5: mean of" in captions
    # Opacity changes reuse the explanation; the analysis is still not re-run.
    at.slider(key="xp_opacity_photo").set_value(0.8).run()
    assert_clean(at)
    assert "Heat map: EfficientNet" in image_captions(at)
    # A transformer: heat map only, no feature maps.
    at.selectbox(key="xp_model_photo").set_value("cnn_transformer").run()
    at.selectbox(key="xp_model_photo").set_value("cross_attention").run()
    at.button(key="xp_go_photo").click().run()
    assert_clean(at)
    assert "Heat map: Cross-Attention" in image_captions(at)
    assert counted["image"] == 1

    # Fast mode analyses the photo again (each face scored once) and says so; back off, the first
    # analysis is reused.
    assert "fast mode" not in texts(at, "caption")
    at.toggle(key="fast").set_value(True).run()
    assert_clean(at)
    assert counted["image"] == 2 and "fast mode" in texts(at, "caption")
    at.toggle(key="fast").set_value(False).run()
    assert counted["image"] == 2 and "fast mode" not in texts(at, "caption")


def test_no_face_via_test_hook(app_env, counted, gradient_png):
    at = new_app()
    at.session_state["test_input_path"] = str(gradient_png)
    at.run()
    assert_clean(at)
    assert "No face found" in texts(at, "info")
    assert metric(at, "Faces found") == "0"
    assert metric(at, "Verdict") == "NO FACE"
    assert len(at.image) == 1                  # the photo itself is still shown
    assert not [s.value for s in at.subheader if s.value.startswith("Face ")]
    assert counted["image"] == 1


def test_test_hook_is_off_without_env(monkeypatch, random_models_dir, gradient_png):
    monkeypatch.setenv("DFSTUDIO_MODELS_DIR", str(random_models_dir))
    monkeypatch.delenv("DFSTUDIO_TEST_HOOKS", raising=False)
    at = new_app()
    at.session_state["test_input_path"] = str(gradient_png)
    at.run()
    assert_clean(at)
    assert "Upload a photo" in texts(at, "info")
    assert not at.metric


def test_broken_file_shows_error_not_traceback(app_env, tmp_path):
    at = new_app().run()
    upload(at, "broken.png", b"this is not an image at all", "image/png", tmp_path)
    assert_clean(at)
    errors = texts(at, "error")
    assert "broken" in errors and "not a readable image" in errors
    assert not at.metric


def test_file_names_are_escaped(app_env, astronaut_bytes):
    at = new_app().run()
    if not hasattr(at, "file_uploader") or not hasattr(at.file_uploader[0], "set_value"):
        pytest.skip("this Streamlit's AppTest cannot upload, and the name is no valid file name")
    name = "[click](http://evil.example) **bold** <b>x</b> :red[y].jpg"
    at.file_uploader[0].set_value((name, astronaut_bytes, "image/jpeg"))
    at.run()
    assert_clean(at)
    caption = next(c.value for c in at.caption if c.value.startswith("File:"))
    assert r"\[click\]\(http\:" in caption and r"\*\*bold\*\*" in caption and r"\<b\>" in caption
    assert r"\:red\[y\]" in caption


def test_no_models_message(monkeypatch, tmp_path):
    from scoring import no_models_message
    monkeypatch.setenv("DFSTUDIO_MODELS_DIR", str(tmp_path))
    at = new_app().run()
    assert_clean(at)
    warning = texts(at, "warning")
    assert "No detectors installed" in warning
    assert no_models_message(tmp_path).split(".")[0] in warning
    assert texts(at.sidebar, "caption").count("not installed") == 5
    assert not at.file_uploader


def test_video_mode(app_env, counted, clip_mp4, tmp_path):
    at = new_app().run()
    at.radio(key="mode").set_value("Video").run()
    frames = at.slider(key="frames")
    assert (frames.value, frames.min, frames.max, frames.step) == (100, 10, 300, 10)
    upload(at, "clip.mp4", clip_mp4.read_bytes(), "video/mp4", tmp_path)
    assert_clean(at)
    assert counted["video"] == 1
    # The upload went to a temporary file that is gone again.
    tmp = counted["video_paths"][0]
    assert Path(tmp).name.startswith("dfstudio-") and tmp.endswith(".mp4") and not os.path.exists(tmp)
    assert metric(at, "Verdict") in ("FAKE", "REAL")
    assert metric(at, "People found") == "1"
    assert metric(at, "Frames with a face") == "20 of 20"
    assert "Person 1" in [s.value for s in at.subheader]
    for label in ("Average", "Median", "Spread", "Lowest", "Highest", "Frames judged fake"):
        assert metric(at, label).endswith("%")
    assert "Over time" in [s.value for s in at.subheader]
    assert len(at.get("vega_lite_chart")) == 1
    labels = [b.label for b in at.get("download_button")]
    assert any("JSON" in lb for lb in labels) and any("Frame table (CSV)" in lb for lb in labels)

    # Settings never re-run the analysis.
    at.slider(key="threshold").set_value(0.0).run()
    assert metric(at, "Verdict") == "FAKE"
    assert metric(at, "Frames judged fake") == "100 %"
    at.toggle(key="use_efficientnet").set_value(False).run()
    assert_clean(at)
    assert "EfficientNet" not in {m.label for m in at.metric}
    assert counted["video"] == 1

    # A new frame count keeps the shown result until the user asks to analyse again.
    at.slider(key="frames").set_value(10).run()
    assert_clean(at)
    assert counted["video"] == 1
    assert "Showing the analysis with 100 frames" in texts(at, "info")
    at.button(key="reanalyse").click().run()
    assert_clean(at)
    assert counted["video"] == 2
    assert metric(at, "Frames with a face") == "10 of 10"
    assert not any(os.path.exists(p) for p in counted["video_paths"])
    # Back to 100 frames: that analysis is still cached.
    at.slider(key="frames").set_value(100).run()
    assert counted["video"] == 2
    assert metric(at, "Frames with a face") == "20 of 20"
    # Fast mode is another analysis (no button: the user asked for it); it says so among the notes.
    at.toggle(key="fast").set_value(True).run()
    assert_clean(at)
    assert counted["video"] == 3 and "fast mode" in texts(at, "caption")
    assert metric(at, "Frames with a face") == "20 of 20"


def test_broken_video_shows_error(app_env, counted, tmp_path):
    at = new_app().run()
    at.radio(key="mode").set_value("Video").run()
    upload(at, "broken.mp4", b"\x00\x01 not a video" * 100, "video/mp4", tmp_path)
    assert_clean(at)
    error = texts(at, "error").replace("\\", "")
    assert "broken.mp4: not a readable video" in error and "dfstudio-" not in error
    assert not any(os.path.exists(p) for p in counted["video_paths"])

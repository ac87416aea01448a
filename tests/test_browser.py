"""End to end in a real browser: `streamlit run app.py` + Debian's Chromium driven by Playwright.

Uploads a photo and a short video through the page's file input, checks what the page says, and
saves screenshots to test-output/ (copied to docs/screenshots/image_mode.png and video_mode.png only
with DFSTUDIO_UPDATE_SCREENSHOTS=1, so a test run leaves the tracked files alone). The test runs the app
on small random-weight models; with DFSTUDIO_UPDATE_SCREENSHOTS=1 it runs it on the shipped weights in
converted_models/, so that the README shows what a user of a fresh clone sees.
Skipped only when /usr/bin/chromium is absent (`make system-deps` installs it).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from conftest import stop_process

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUT = ROOT / "test-output"
SCREENSHOTS = ROOT / "docs" / "screenshots"
SERVER_START_S = 300
ANALYSIS_MS = 900_000        # a busy machine: the first visit loads the detectors, then analyses run

pytestmark = [pytest.mark.slow,   # `make test-fast` leaves it out
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed "
                                 "(apt-get install chromium)")]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=5) as resp:
                if resp.status == 200 and resp.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise AssertionError(f"streamlit did not become healthy in {timeout} s:\n{log_path.read_text()[-3000:]}")


def updating_screenshots() -> bool:
    return os.environ.get("DFSTUDIO_UPDATE_SCREENSHOTS") == "1"


@pytest.fixture(scope="module")
def server(random_models_dir):
    OUT.mkdir(exist_ok=True)
    port = free_port()
    log_path = OUT / "streamlit-server.log"
    models_dir = ROOT / "converted_models" if updating_screenshots() else random_models_dir
    env = {**os.environ, "DFSTUDIO_MODELS_DIR": str(models_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("DFSTUDIO_TEST_HOOKS", None)
    log = open(log_path, "wb")
    # Popen on the interpreter itself (no shell): proc.pid is the server's, so it can be stopped.
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log_path, SERVER_START_S)
        yield url
    finally:
        stop_process(proc, timeout=30)
        log.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(server, wait_until="domcontentloaded")
            page.get_by_text("Deepfake Detection Studio").first.wait_for()
            yield page
        finally:
            browser.close()


def wait_until_run_done(page) -> None:
    """Until Streamlit's script run has finished (no 'running' status widget)."""
    page.wait_for_function("""() => {
        const w = document.querySelector('[data-testid="stStatusWidget"]');
        return !w || !/running|stop/i.test(w.innerText);
    }""", timeout=ANALYSIS_MS)


def wait_until_idle(page) -> None:
    """Until the script run has finished (the page ends with the downloads; no 'running' widget)."""
    page.get_by_text("Download the results").first.wait_for(timeout=ANALYSIS_MS)
    wait_until_run_done(page)


def full_screenshot(page, name: str) -> Path:
    """Screenshot of the whole app: the viewport is grown to the main area's scroll height first
    (Streamlit scrolls inside its main container, so a plain full-page shot would be cut)."""
    wait_until_idle(page)
    page.wait_for_timeout(1500)          # let images and the chart finish drawing
    height = page.evaluate("""() => {
        const main = document.querySelector('[data-testid="stMain"]') ||
                     document.querySelector('section.main') || document.body;
        return Math.max(main.scrollHeight, document.body.scrollHeight);
    }""")
    page.set_viewport_size({"width": 1400, "height": int(min(max(height, 1000), 12000))})
    page.wait_for_timeout(1500)
    path = OUT / name
    page.screenshot(path=str(path), full_page=True)
    if updating_screenshots():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / name)
    page.set_viewport_size({"width": 1400, "height": 1000})
    return path


def assert_no_traceback(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in page.inner_text("body")


@contextlib.contextmanager
def screenshot_on_failure(page):
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(OUT / "failure.png"), full_page=True)
        raise


def test_photo_then_video_in_chromium(page, astronaut_jpg, tmp_path, astronaut):
    with screenshot_on_failure(page):
        run_photo_then_video(page, astronaut_jpg, tmp_path, astronaut)


def run_photo_then_video(page, astronaut_jpg, tmp_path, astronaut):
    from playwright.sync_api import expect

    from conftest import make_drifting_video

    # The first visit loads the detectors (once per server): allow for a busy machine.
    page.locator('input[type="file"]').first.wait_for(state="attached", timeout=ANALYSIS_MS)
    # ---- photo --------------------------------------------------------------------------------
    page.locator('input[type="file"]').first.set_input_files(str(astronaut_jpg))
    page.get_by_text("Face 1", exact=True).first.wait_for(timeout=ANALYSIS_MS)
    wait_until_idle(page)
    expect(page.get_by_text(re.compile(r"Verdict: (FAKE|REAL)")).first).to_be_visible()
    # Streamlit paints metrics and images after the verdict box: wait for them, not a fixed time.
    page.get_by_text("Faces found").first.wait_for(timeout=ANALYSIS_MS)
    expect(page.locator('[data-testid="stImage"] img').nth(1)).to_be_attached(timeout=ANALYSIS_MS)
    body = page.inner_text("body")
    assert "Faces found" in body and "Ensemble:" in body and "Face 2" not in body
    for title in ("Xception", "EfficientNet", "Swin Transformer", "Cross-Attention", "CNN-Transformer"):
        assert title in body
    assert page.locator('[data-testid="stImage"] img').count() >= 2      # annotated photo + crop
    assert_no_traceback(page)
    shot = full_screenshot(page, "image_mode.png")
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height >= 1000

    # ---- video --------------------------------------------------------------------------------
    clip = make_drifting_video(tmp_path / "clip.mp4", astronaut)
    page.locator('[data-testid="stRadio"] label').filter(has_text="Video").first.click()
    page.get_by_text("Frames to analyse").first.wait_for()
    # Until the run that switched modes has finished, the photo's uploader can still be on the page
    # (Streamlit removes stale elements at the end of a run): a file given to it would be lost.
    wait_until_run_done(page)
    expect(page.locator('input[type="file"]')).to_have_count(1)
    page.locator('input[type="file"]').first.set_input_files(str(clip))
    page.get_by_text("Person 1", exact=True).first.wait_for(timeout=ANALYSIS_MS)
    wait_until_idle(page)
    expect(page.get_by_text(re.compile(r"Verdict: (FAKE|REAL)")).first).to_be_visible()
    page.get_by_text("Statistics over the frames").first.wait_for(timeout=ANALYSIS_MS)
    body = page.inner_text("body")
    assert "Over time" in body and "Statistics over the frames" in body and "20 of 20" in body
    page.locator('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg').first.wait_for()
    assert_no_traceback(page)
    full_screenshot(page, "video_mode.png")

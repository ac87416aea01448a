"""Shared fixtures and helpers: small randomly initialised converted models and synthetic inputs.

Tests write the models and media they need and never read the datasets' images; only
tests/test_shipped_models.py reads the shipped weights in converted_models/ (it checks them).
Test modules import shared helpers from here (`from conftest import make_video`), never from each other.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DFSTUDIO_ONNX_CACHE", str(ROOT / ".pytest_cache" / "onnx"))

import model_store  # noqa: E402
from registry import MODEL_KEYS  # noqa: E402

SMALL_SIZE = 64

# `make test-fast` runs two xdist workers that take whole files in collection order; the longest files
# (measured with --durations=0: 34, 18, 17, 12 and 10 s of 143 s) go first, so that no worker is left
# running a long file alone at the end (longest-processing-time-first scheduling). The order within a
# file, and of every other file, is unchanged.
LONGEST_FILES_FIRST = ("test_fast_runtime.py", "test_api.py", "test_hostile_inputs.py", "test_cli.py", "test_app.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))     # stable sort


def write_random_models(out_dir: Path, keys=MODEL_KEYS, size: int = SMALL_SIZE, seed: int = 0,
                        ensemble: bool = True) -> Path:
    return model_store.write_random_models(out_dir, keys, size, seed, ensemble=ensemble,
                                           extra={"metrics": {"test": {"auc": 0.5}},
                                                  "note": "random weights for tests"})


@pytest.fixture(scope="session")
def random_models_dir(tmp_path_factory) -> Path:
    return write_random_models(tmp_path_factory.mktemp("converted_models"))


@pytest.fixture(scope="session")
def engine(random_models_dir):
    from scoring import ScoringEngine
    return ScoringEngine(random_models_dir)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data
    return data.astronaut()


@pytest.fixture(scope="session")
def astronaut_jpg(tmp_path_factory, astronaut) -> Path:
    from PIL import Image
    path = tmp_path_factory.mktemp("img") / "astronaut.jpg"
    Image.fromarray(astronaut).save(path, quality=92)
    return path


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


def make_video(path: Path, frame: np.ndarray, n: int = 20, fps: float = 10.0, shift: int = 2) -> Path:
    """An mp4 of `frame` rolled `shift` px further right in each of its `n` frames."""
    return write_video(path, (np.roll(frame, i * shift, axis=1) for i in range(n)), fourcc="mp4v", fps=fps)


def make_drifting_video(path: Path, astronaut: np.ndarray, frames: int = 20, size: int = 256,
                        fps: float = 10.0) -> Path:
    """A square mp4 of astronaut's face drifting slowly, as in a real clip (480 px windows, resized)."""
    def frame(i: int) -> np.ndarray:
        shift = 2 * i
        return cv2.resize(astronaut[shift:shift + 480, shift:shift + 480], (size, size), interpolation=cv2.INTER_AREA)

    write_video(path, (frame(i) for i in range(frames)), fourcc="mp4v", fps=fps)
    assert path.stat().st_size > 0
    return path


def make_face_dataset(root: Path, per_class: int = 24, size: int = 64, seed: int = 0) -> Path:
    """real/ and fake/ folders (nested) of synthetic 'faces': fakes carry a blended high-frequency patch."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for label in ("real", "fake"):
        for i in range(per_class):
            base = np.stack([np.sin(xx * rng.uniform(2, 6) + rng.uniform(0, 3)),
                             np.cos(yy * rng.uniform(2, 6) + rng.uniform(0, 3)),
                             np.sin((xx + yy) * rng.uniform(1, 4))], axis=2) * 60 + 128
            if label == "fake":
                patch = rng.normal(0, 40, (size // 2, size // 2, 3))
                base[size // 4: 3 * size // 4, size // 4: 3 * size // 4] += patch
            folder = root / label / f"batch{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(folder / f"{label}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, astronaut) -> dict[str, Path]:
    """The hostile-input corpus of tests/hostile_corpus.py (file name -> path)."""
    from hostile_corpus import write_corpus
    return write_corpus(tmp_path_factory.mktemp("hostile corpus ü"), astronaut)   # a space and non-ASCII


@contextlib.contextmanager
def every_cli_run_uses(engine):
    """predict.main() loads its own engine (pipeline.load_engine); in-process CLI runs get `engine`
    (loaded once) instead."""
    import pipeline
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "load_engine", lambda *args, **kwargs: engine)
        yield engine


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate a server started by a test; kill it if it has not exited after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


# Two of the installed models, the quickest to load: for tests that start the API server or the CLI in
# subprocesses, where loading them all would dominate their time (the pipeline is the same for any set).
TWO_MODEL_KEYS = ("cross_attention", "cnn_transformer")


@pytest.fixture(scope="session")
def two_random_models_dir(tmp_path_factory) -> Path:
    return write_random_models(tmp_path_factory.mktemp("two_converted_models"), keys=TWO_MODEL_KEYS)

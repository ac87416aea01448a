"""Shared fixtures: small randomly initialised converted models and synthetic inputs.

Tests never read the shipped weights or the datasets' images: they write what they need.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DFSTUDIO_ONNX_CACHE", str(ROOT / ".pytest_cache" / "onnx"))

from model_store import atomic_write_json, save_converted_model  # noqa: E402
from registry import MODEL_KEYS, get_spec  # noqa: E402

SMALL_SIZE = 64


def write_random_models(out_dir: Path, keys=MODEL_KEYS, size: int = SMALL_SIZE, seed: int = 0,
                        ensemble: bool = True) -> Path:
    torch.manual_seed(seed)
    for key in keys:
        model = get_spec(key).build(size, pretrained=False)
        save_converted_model(model, key, out_dir, input_size=size, temperature=1.0, threshold=0.5,
                             extra={"metrics": {"test": {"auc": 0.5}}, "note": "random weights for tests"})
    if ensemble:
        atomic_write_json(out_dir / "ensemble.json", {"key": "ensemble", "weights": {k: 1.0 / len(keys) for k in keys},
                                                      "bias": 0.0, "threshold": 0.5})
    return out_dir


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


# Two of the five models, the quickest to load: for tests that start the API server or the CLI in
# subprocesses, where loading all five would dominate their time (the pipeline is the same for any set).
TWO_MODEL_KEYS = ("cross_attention", "cnn_transformer")


@pytest.fixture(scope="session")
def two_random_models_dir(tmp_path_factory) -> Path:
    return write_random_models(tmp_path_factory.mktemp("two_converted_models"), keys=TWO_MODEL_KEYS)

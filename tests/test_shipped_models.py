"""The weights shipped in converted_models/: present, verified, compact, documented, and working.

These are the only tests that read the shipped weights (a fresh clone must be a working detector).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from model_store import DEFAULT_MODELS_DIR, discover_manifests
from registry import MODEL_KEYS

SHIPPED = discover_manifests(DEFAULT_MODELS_DIR)
pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped weights in converted_models/")


def test_shipped_weights_are_compact_fp16():
    total = sum(p.stat().st_size for p in Path(DEFAULT_MODELS_DIR).glob("*.safetensors"))
    assert total <= 150 * 1024 * 1024
    for key, path in SHIPPED.items():
        manifest = json.loads(path.read_text())
        assert manifest["weights_dtype"] == "float16"
        test = manifest["metrics"]["test"]
        assert test["command"].startswith("python evaluate.py") and 0.5 <= test["auc"] <= 1.0
        assert manifest["training"]["dataset"] == "dfdc-faces"


def test_shipped_models_load_verified_and_score_a_photo(astronaut_jpg):
    from pipeline import analyze_image, build_report
    from scoring import ScoringEngine
    engine = ScoringEngine(DEFAULT_MODELS_DIR)
    assert [k for k, s in engine.status.items() if s.state == "loaded"] == list(SHIPPED)
    report = build_report(analyze_image(str(astronaut_jpg), engine), engine)
    assert len(report["faces"]) == 1 and set(report["models"]) == set(SHIPPED)
    assert report["verdict"] in ("REAL", "FAKE")


def test_shipped_members_are_calibrated_on_the_views_the_registry_gives_them():
    """Every shipped voter records the registry's views and every advisory member none: a registry
    change of views ships only with the members recalibrated (`convert_models.py --ensemble`)."""
    from convert_models import views_out_of_date
    assert views_out_of_date(Path(DEFAULT_MODELS_DIR)) == []
    for path in SHIPPED.values():
        assert "test_time_shifts" in json.loads(path.read_text())


def test_all_five_and_the_ensemble_ship():
    assert set(SHIPPED) == set(MODEL_KEYS)
    assert (Path(DEFAULT_MODELS_DIR) / "ensemble.json").exists()


def test_shipped_swin_shows_its_stem_feature_maps_and_a_heat_map(astronaut):
    """The shipped Swin has the MobileNetV2 stem (docs/training.md, session 25): the app's feature
    maps come from the stem its manifest names, and Grad-CAM still explains its last stage."""
    import cv2

    import feature_visualization as fv
    from scoring import ScoringEngine
    engine = ScoringEngine(DEFAULT_MODELS_DIR, keys=["swin"])
    loaded = engine.models["swin"]
    assert loaded.manifest["architecture"]["args"].get("stem") == "mobilenet_v2"
    face = np.ascontiguousarray(cv2.resize(astronaut[20:220, 160:360], (224, 224), interpolation=cv2.INTER_AREA))
    layers = fv.engine_feature_maps(engine, "swin", face)
    assert [lf.layer for lf in layers] == list(fv.layers_to_show(loaded)) and len(layers) == 2
    assert all(np.isfinite(lf.mean_map).all() and lf.mean_map.max() > lf.mean_map.min() for lf in layers)
    heat = fv.engine_grad_cam(engine, "swin", face)
    assert heat.shape == (loaded.input_size,) * 2 and np.isfinite(heat).all() and heat.max() > heat.min()

"""Feature maps and Grad-CAM heat maps on small random-weight models (input size 64)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import feature_visualization as fv
from conftest import SMALL_SIZE
from registry import MODEL_KEYS, get_spec

CNN_KEYS = [k for k in MODEL_KEYS if get_spec(k).feature_layers]


@pytest.fixture(scope="module")
def crops(astronaut):
    """Different 224 px crops (uint8 RGB): the astronaut's face, another part of the picture, the face
    half covered, and noise. Random 64 px models have tiny last grids (2x2), so one changed input can
    leave a map unchanged by chance; the tests ask for a change across several different inputs."""
    import cv2
    face = np.ascontiguousarray(cv2.resize(astronaut[20:220, 160:360], (224, 224), interpolation=cv2.INTER_AREA))
    other = np.ascontiguousarray(cv2.resize(astronaut[250:450, 30:230], (224, 224), interpolation=cv2.INTER_AREA))
    half = face.copy()
    half[:, 112:] = 0
    noise = np.random.RandomState(0).randint(0, 256, (224, 224, 3), dtype=np.uint8)
    return face, other, half, noise


def test_cnn_models_with_named_stages_include_xception_and_efficientnet():
    assert {"xception", "efficientnet"} <= set(CNN_KEYS)


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_registry_layers_resolve(engine, key):
    spec = get_spec(key)
    model = engine.models[key].model
    for name in (*spec.feature_layers, spec.cam_layer):
        assert isinstance(fv.resolve_module(model, name), torch.nn.Module)
    with pytest.raises(AttributeError):
        fv.resolve_module(model, "no_such_layer.0")


def test_prepare_input_matches_scoring(engine, crops):
    from scoring import prepare_batch
    loaded = engine.models["efficientnet"]
    x = fv.prepare_input(loaded, crops[0])
    ref = prepare_batch([crops[0]], loaded.input_size, loaded.manifest["mean"], loaded.manifest["std"])
    assert x.shape == (1, 3, SMALL_SIZE, SMALL_SIZE)
    assert torch.equal(x, ref)
    with pytest.raises(ValueError):
        fv.prepare_input(loaded, crops[0].astype(np.float32))


@pytest.mark.parametrize("key", CNN_KEYS)
def test_feature_maps_shapes_and_ranges(engine, crops, key):
    loaded = engine.models[key]
    layers = fv.feature_maps(loaded, crops[0], top_k=3)
    assert [lf.layer for lf in layers] == list(get_spec(key).feature_layers)
    for lf in layers:
        c, h, w = lf.shape
        assert c >= 3 and h >= 1 and w >= 1
        assert lf.mean_map.shape == (h, w) and lf.mean_map.dtype == np.float32
        assert 0.0 <= lf.mean_map.min() and lf.mean_map.max() <= 1.0
        assert len(lf.top_channels) == 3
        assert len({idx for idx, _ in lf.top_channels}) == 3
        for idx, m in lf.top_channels:
            assert 0 <= idx < c and m.shape == (h, w)
            assert 0.0 <= m.min() and m.max() <= 1.0
    # Deeper stages are coarser grids.
    sides = [lf.shape[1] for lf in layers]
    assert sides == sorted(sides, reverse=True)
    # Hooks are removed afterwards.
    for name in get_spec(key).feature_layers:
        assert not fv.resolve_module(loaded.model, name)._forward_hooks


def test_feature_maps_change_with_input(engine, crops):
    loaded = engine.models["xception"]
    a = fv.feature_maps(loaded, crops[0])[0].mean_map
    for other in crops[1:]:
        assert not np.allclose(a, fv.feature_maps(loaded, other)[0].mean_map)


def test_model_without_feature_layers_has_none(engine, crops):
    assert not fv.has_feature_maps(engine.models["swin"])
    assert fv.feature_maps(engine.models["swin"], crops[0]) == []


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_grad_cam_all_models(engine, crops, key):
    loaded = engine.models[key]
    model = loaded.model
    flags_before = [p.requires_grad for p in model.parameters()]
    lock = threading.Lock()
    heats = {explain: [fv.grad_cam(loaded, crop, explain=explain, lock=lock) for crop in crops]
             for explain in ("fake", "real")}
    for heat in heats["fake"] + heats["real"]:
        assert heat.shape == (SMALL_SIZE, SMALL_SIZE)
        assert heat.dtype == np.float32
        assert np.isfinite(heat).all()
        assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert max(h.max() for h in heats["fake"] + heats["real"]) > 0.0, f"{key}: every heat map is empty"
    # The map follows the input. (Random-weight models at 64 px have 2x2 last grids and some give
    # almost the same logit for every input, so one direction may stay put by chance; the maps of
    # at least one direction must move.)
    assert any(not np.allclose(maps[0], h, atol=1e-3) for maps in heats.values() for h in maps[1:]), \
        f"{key}: heat map does not depend on the input"
    # The shared model is left as found: no hooks, no gradients, same requires_grad flags, eval mode.
    assert [p.requires_grad for p in model.parameters()] == flags_before
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert not fv.resolve_module(model, get_spec(key).cam_layer)._forward_hooks
    assert not lock.locked()
    # Scoring still works after the explanation (hooks released, nothing left in grad mode).
    assert np.isfinite(engine.model_logits(key, [crops[0]])).all()


def test_grad_cam_is_deterministic_and_real_is_different(engine, crops):
    loaded = engine.models["efficientnet"]
    fake = fv.grad_cam(loaded, crops[0])
    assert np.allclose(fake, fv.grad_cam(loaded, crops[0]), atol=1e-5)
    real = fv.grad_cam(loaded, crops[0], explain="real")
    assert real.shape == fake.shape
    assert not np.allclose(fake, real, atol=1e-3)


def test_channels_last_reshape():
    t = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)   # B, H, W, C
    out = fv.to_channels_first(t, channels_last=True)
    assert out.shape == (2, 5, 3, 4)
    assert torch.equal(out[1, 2], t[1, :, :, 2])
    assert fv.to_channels_first(t).shape == t.shape
    tokens = torch.randn(2, 1 + 16, 8)                                           # CLS + 4x4 grid
    assert fv.to_channels_first(tokens).shape == (2, 8, 4, 4)
    with pytest.raises(ValueError):
        fv.to_channels_first(torch.randn(2, 7, 8))


def test_overlay_opacity(crops):
    crop = crops[0]
    heat = np.zeros((7, 7), np.float32)
    heat[3, 3] = 1.0
    assert np.array_equal(fv.overlay(crop, heat, 0.0), crop)
    full = fv.overlay(crop, heat, 1.0)
    half = fv.overlay(crop, heat, 0.5)
    for img in (full, half):
        assert img.shape == crop.shape and img.dtype == np.uint8
    assert not np.array_equal(full, crop)
    # Half opacity lies between the crop and the pure heat map.
    assert np.abs(half.astype(int) - (crop.astype(int) + full.astype(int)) / 2).max() <= 1
    thumb = fv.colorize(heat, size=32)
    assert thumb.shape == (32, 32, 3) and thumb.dtype == np.uint8


def test_normalise_and_resize():
    assert np.array_equal(fv.normalise_map(np.full((3, 3), 5.0)), np.zeros((3, 3), np.float32))
    m = fv.normalise_map(np.array([[1.0, 3.0], [2.0, np.nan]]))
    assert m.min() == 0.0 and m.max() == 1.0
    assert fv.resize_map(m, 10).shape == (10, 10)
    assert fv.resize_map(m, (4, 6)).shape == (4, 6)


def test_grad_cam_of_a_stride_8_swin_reads_its_third_stage(crops):
    """Behind stem=mobilenet_v2_s8 Swin's last stage is 2x2 at 128 px; the heat map comes from the
    variant's own Grad-CAM layer (the third stage, 4x4), named by the manifest's architecture args."""
    from model_store import LoadedModel
    spec = get_spec("swin")
    torch.manual_seed(0)
    model = spec.build(128, stem="mobilenet_v2_s8").eval()
    manifest = {"architecture": {"name": "swin", "args": {"stem": "mobilenet_v2_s8"}}, "input_size": 128,
                "mean": list(spec.mean), "std": list(spec.std)}
    loaded = LoadedModel("swin", model, manifest)
    assert fv.cam_layer_of(loaded) == "layers.2.blocks.1.norm1" != spec.cam_layer
    # A random model's logit may fall everywhere: one of the two explanations then has a map.
    heats = [fv.grad_cam(loaded, crops[0], explain=side) for side in ("fake", "real")]
    assert all(h.shape == (128, 128) and np.isfinite(h).all() for h in heats)
    assert any(float(h.max() - h.min()) > 0.1 for h in heats)
    assert [lf.layer for lf in fv.feature_maps(loaded, crops[0], top_k=1)] == list(spec.layers_to_show(
        {"stem": "mobilenet_v2_s8"}))

"""ONNX Runtime path (fast_runtime.OnnxRunner): equal to torch, cached, and never trusting a bad cache."""
from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import torch

import fast_runtime
from fast_runtime import OnnxRunner, OnnxUnavailable, cache_paths
from model_store import discover_manifests, load_converted_model
from registry import MODEL_KEYS

TOL = 1e-3


@pytest.fixture(scope="module")
def loaded_models(random_models_dir):
    return {k: load_converted_model(p) for k, p in discover_manifests(random_models_dir).items()}


@pytest.fixture(scope="module")
def runners(loaded_models):
    """One runner per model, in the suite's shared cache (DFSTUDIO_ONNX_CACHE, set by conftest)."""
    return {k: OnnxRunner(m) for k, m in loaded_models.items()}


def torch_logits(loaded, batch):
    with torch.no_grad():
        return loaded.model.eval()(batch).reshape(-1).numpy()


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_onnx_equals_torch(key, loaded_models, runners):
    loaded, runner = loaded_models[key], runners[key]
    assert runner.runtime == "onnx"
    for n in (1, 5):  # batch sizes other than the exporter's dummy batch: the batch axis is dynamic
        batch = torch.randn(n, 3, loaded.input_size, loaded.input_size, generator=torch.Generator().manual_seed(n))
        got = runner.logits(batch)
        assert got.shape == (n,) and got.dtype == np.float32
        np.testing.assert_allclose(got, torch_logits(loaded, batch), atol=TOL, rtol=TOL)
    # A channels_last batch (what scoring.prepare_batch makes) gives the same logits.
    cl = batch.contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(runner.logits(cl), runner.logits(batch), atol=1e-6)


def test_cache_is_reused(loaded_models, runners):
    """A second construction reads the cached file: no export, file untouched."""
    before = fast_runtime.EXPORT_COUNT
    for key, loaded in loaded_models.items():
        onnx_path, record_path = cache_paths(loaded)
        assert onnx_path == runners[key].onnx_path and onnx_path.is_file() and record_path.is_file()
        mtime = onnx_path.stat().st_mtime_ns
        again = OnnxRunner(loaded)
        assert not again.exported, again.cache_problem
        assert onnx_path.stat().st_mtime_ns == mtime
        record = json.loads(record_path.read_text())
        assert record["weights_sha256"] == loaded.manifest["sha256"] and record["input_size"] == loaded.input_size
    assert fast_runtime.EXPORT_COUNT == before


def test_the_cache_holds_the_runtime_s_pre_optimised_graph(loaded_models, runners):
    """What is cached is ONNX Runtime's EXTENDED optimisation of the export (fused operators), which a
    start loads without redoing it; it is checked against torch like the raw export."""
    import onnx
    import onnxruntime

    loaded = loaded_models["cnn_transformer"]
    onnx_path, record_path = cache_paths(loaded)
    record = json.loads(record_path.read_text())
    assert record["preoptimised"] is True and record["onnxruntime"] == onnxruntime.__version__
    raw, _ = fast_runtime._export_bytes(loaded.model, loaded.input_size)
    cached = onnx.load(str(onnx_path))
    assert len(cached.graph.node) < len(onnx.load_from_string(raw).graph.node)   # fused: fewer nodes
    batch = torch.randn(2, 3, loaded.input_size, loaded.input_size)
    np.testing.assert_allclose(runners["cnn_transformer"].logits(batch), torch_logits(loaded, batch), atol=TOL, rtol=TOL)


def test_cache_key_and_location(loaded_models, tmp_path, monkeypatch):
    loaded = loaded_models["cnn_transformer"]
    onnx_path, record_path = cache_paths(loaded, tmp_path)
    assert loaded.manifest["sha256"] in onnx_path.name and f"-{loaded.input_size}px-" in onnx_path.name
    assert onnx_path.parent == tmp_path and record_path.name == onnx_path.name + ".json"
    monkeypatch.delenv(fast_runtime.CACHE_ENV, raising=False)
    assert fast_runtime.cache_dir() == fast_runtime.Path.home() / ".cache" / "deepfake-studio" / "onnx"
    monkeypatch.setenv(fast_runtime.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert cache_paths(loaded)[0].parent == tmp_path / "elsewhere"


def _copy_cached(loaded, dest):
    src_onnx, src_record = cache_paths(loaded)
    dst_onnx, dst_record = cache_paths(loaded, dest)
    shutil.copy(src_onnx, dst_onnx)
    shutil.copy(src_record, dst_record)
    return dst_onnx, dst_record


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_record", "bad_record", "other_weights", "other_runtime"])
def test_damaged_cache_is_rebuilt(damage, loaded_models, runners, tmp_path):
    loaded = loaded_models["efficientnet"]
    onnx_path, record_path = _copy_cached(loaded, tmp_path)
    data = bytearray(onnx_path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        onnx_path.write_bytes(bytes(data))
    elif damage == "truncate":
        onnx_path.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "no_record":
        record_path.unlink()
    elif damage == "bad_record":
        record_path.write_text("{not json")
    elif damage in ("other_weights", "other_runtime"):   # the cached graph is another runtime's optimisation
        record = json.loads(record_path.read_text())
        record["weights_sha256" if damage == "other_weights" else "onnxruntime"] = "0" * 64
        record_path.write_text(json.dumps(record))
    runner = OnnxRunner(loaded, directory=tmp_path)
    assert runner.exported and runner.cache_problem
    # The rebuilt file is intact, recorded, and computes the right thing.
    record = json.loads(record_path.read_text())
    assert record["onnx_sha256"] == fast_runtime.hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    batch = torch.randn(3, 3, loaded.input_size, loaded.input_size)
    np.testing.assert_allclose(runner.logits(batch), torch_logits(loaded, batch), atol=TOL, rtol=TOL)
    assert not OnnxRunner(loaded, directory=tmp_path).exported


def test_wrong_graph_with_matching_hash_is_caught(loaded_models, runners, tmp_path):
    """A cached file whose record was rewritten to match (another model's graph) fails the torch check."""
    loaded, other = loaded_models["efficientnet"], loaded_models["cnn_transformer"]
    onnx_path, record_path = cache_paths(loaded, tmp_path)
    other_bytes = runners["cnn_transformer"].onnx_path.read_bytes()
    onnx_path.write_bytes(other_bytes)
    record = {**fast_runtime._record_for(loaded), "onnx_sha256": fast_runtime.hashlib.sha256(other_bytes).hexdigest()}
    record_path.write_text(json.dumps(record))
    assert other.input_size == loaded.input_size
    runner = OnnxRunner(loaded, directory=tmp_path)
    assert runner.exported and "differs from torch" in runner.cache_problem
    assert onnx_path.read_bytes() != other_bytes


def test_mismatch_on_fresh_export_raises_and_engine_falls_back(random_models_dir, loaded_models, tmp_path, monkeypatch):
    from scoring import ScoringEngine, TorchRunner

    monkeypatch.setenv(fast_runtime.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(fast_runtime, "ATOL", -1.0)         # nothing can pass the check
    with pytest.raises(OnnxUnavailable):
        OnnxRunner(loaded_models["cnn_transformer"])
    assert not list(tmp_path.glob("*.onnx"))               # a failed export is never cached
    engine = ScoringEngine(random_models_dir, keys=["cnn_transformer"])
    assert isinstance(engine.runners["cnn_transformer"], TorchRunner)


def test_export_failure_falls_back_to_torch(random_models_dir, tmp_path, monkeypatch):
    from scoring import ScoringEngine, TorchRunner

    def broken(model, size):
        raise OnnxUnavailable("exporter cannot handle this model")

    monkeypatch.setenv(fast_runtime.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(fast_runtime, "_export_bytes", broken)
    engine = ScoringEngine(random_models_dir, keys=["cross_attention"])
    assert isinstance(engine.runners["cross_attention"], TorchRunner)
    with pytest.raises(OnnxUnavailable):
        ScoringEngine(random_models_dir, keys=["cross_attention"], runtime="onnx")


def test_engine_uses_onnx_and_matches_torch_engine(random_models_dir, engine):
    from scoring import ScoringEngine

    assert {type(r).__name__ for r in engine.runners.values()} == {"OnnxRunner"}
    torch_engine = ScoringEngine(random_models_dir, runtime="torch")
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(5)]
    a, b = engine.score_crops(crops), torch_engine.score_crops(crops)
    for key in MODEL_KEYS:
        np.testing.assert_allclose(a.model_logits[key], b.model_logits[key], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(a.ensemble_probability, b.ensemble_probability, atol=1e-4)


def test_runner_is_thread_safe(loaded_models, runners):
    loaded, runner = loaded_models["cross_attention"], runners["cross_attention"]
    batches = [torch.randn(2 + i % 3, 3, loaded.input_size, loaded.input_size) for i in range(8)]
    expected = [runner.logits(b) for b in batches]
    results: dict[int, np.ndarray] = {}
    errors = []

    def work(i):
        try:
            for _ in range(3):
                results[i] = runner.logits(batches[i])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, exp in enumerate(expected):
        np.testing.assert_allclose(results[i], exp, atol=1e-6)


def test_unwritable_cache_still_runs_onnx(loaded_models, tmp_path):
    """A cache folder that cannot be created: export in memory, run, cache nothing."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    loaded = loaded_models["efficientnet"]
    runner = OnnxRunner(loaded, directory=blocker / "onnx")
    assert runner.exported
    batch = torch.randn(2, 3, loaded.input_size, loaded.input_size)
    np.testing.assert_allclose(runner.logits(batch), torch_logits(loaded, batch), atol=TOL, rtol=TOL)


def test_cache_keeps_a_bounded_number_of_exports_per_model(loaded_models, tmp_path, monkeypatch):
    loaded = loaded_models["efficientnet"]
    for i in range(3):  # stale exports of other weights of the same model, oldest first
        stale = tmp_path / f"efficientnet-64px-{i:064x}-abc.onnx"
        stale.write_bytes(b"old")
        stale.with_name(stale.name + ".json").write_text("{}")
        fast_runtime.os.utime(stale, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "cnn_transformer-64px-x.onnx").write_bytes(b"other model: never pruned here")
    monkeypatch.setattr(fast_runtime, "KEEP_PER_MODEL", 2)
    runner = OnnxRunner(loaded, directory=tmp_path)
    kept = sorted(p.name for p in tmp_path.glob("efficientnet-*.onnx"))
    assert runner.onnx_path.name in kept and len(kept) == 2
    assert f"efficientnet-64px-{2:064x}-abc.onnx" in kept                       # the newest stale one
    assert not (tmp_path / f"efficientnet-64px-{0:064x}-abc.onnx.json").exists()
    assert (tmp_path / "cnn_transformer-64px-x.onnx").exists()


def test_torch_module_is_released_and_rebuilt_for_explanations(tmp_path):
    """Scores never need the torch module, so the runner drops it; an explanation gets it back."""
    from model_store import write_random_models

    models = write_random_models(tmp_path / "models", keys=["cnn_transformer"], size=64, seed=0)
    loaded = load_converted_model(models / "cnn_transformer.json")
    runner = OnnxRunner(loaded, directory=tmp_path / "onnx")
    assert not loaded.module_loaded and loaded.builds == 1
    batch = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    scores = runner.logits(batch)
    module = runner.model                       # rebuilt from the verified file
    assert loaded.module_loaded and loaded.builds == 2 and runner.model is module
    np.testing.assert_allclose(scores, torch_logits(loaded, batch), atol=TOL, rtol=TOL)


def test_a_released_module_is_not_rebuilt_from_a_different_file(tmp_path):
    """If the model on disk changed after loading, explanations must not silently explain another model."""
    from model_store import ModelFileError, write_random_models

    models = write_random_models(tmp_path / "models", keys=["cnn_transformer"], size=64, seed=0)
    loaded = load_converted_model(models / "cnn_transformer.json")
    OnnxRunner(loaded, directory=tmp_path / "onnx")
    write_random_models(models, keys=["cnn_transformer"], size=64, seed=1)   # another model, same place
    with pytest.raises(ModelFileError, match="changed on disk"):
        loaded.model


def test_engine_start_with_a_valid_cache_builds_no_torch_module(tmp_path, monkeypatch):
    """The manifest's check logits prove a cached graph: scoring starts without any torch module."""
    from model_store import write_random_models
    from scoring import ScoringEngine

    monkeypatch.setenv(fast_runtime.CACHE_ENV, str(tmp_path / "onnx"))
    models = write_random_models(tmp_path / "models", keys=["efficientnet", "cnn_transformer"], size=64)
    first = ScoringEngine(models)                       # exports: builds each module once, then drops it
    assert all(not m.module_loaded and m.builds == 1 for m in first.models.values())
    again = ScoringEngine(models)
    assert all(r.runtime == "onnx" and not r.exported for r in again.runners.values())
    assert all(m.builds == 0 for m in again.models.values())
    crop = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    np.testing.assert_allclose(again.score_crops([crop]).ensemble_probability,
                               ScoringEngine(models, runtime="torch").score_crops([crop]).ensemble_probability,
                               atol=1e-4)


def test_manifest_check_logits_that_the_graph_does_not_reproduce_force_a_checked_export(tmp_path, monkeypatch):
    from fileio import atomic_write_json
    from model_store import read_manifest, write_random_models

    monkeypatch.setenv(fast_runtime.CACHE_ENV, str(tmp_path / "onnx"))
    models = write_random_models(tmp_path / "models", keys=["cnn_transformer"], size=64)
    OnnxRunner(load_converted_model(models / "cnn_transformer.json", build_module=False))   # fills the cache
    manifest = read_manifest(models / "cnn_transformer.json")
    manifest["check_logits"] = [v + 1.0 for v in manifest["check_logits"]]
    atomic_write_json(models / "cnn_transformer.json", manifest)
    runner = OnnxRunner(load_converted_model(models / "cnn_transformer.json", build_module=False))
    assert runner.exported and "differs" in runner.cache_problem   # re-exported and checked against torch

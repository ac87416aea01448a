"""Converted-model format: fp16 safetensors + manifest with SHA-256; refusals name the file."""
import json
import shutil

import pytest
import torch

from model_store import ModelFileError, load_converted_model, save_converted_model, sha256_of
from registry import get_spec
from scoring import ScoringEngine


def test_round_trip_is_exact_in_fp16(tmp_path):
    model = get_spec("cnn_transformer").build(64).eval()
    manifest_path = save_converted_model(model, "cnn_transformer", tmp_path, input_size=64, temperature=1.7)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["sha256"] == sha256_of(tmp_path / "cnn_transformer.safetensors")
    assert manifest["weights_dtype"] == "float16" and manifest["temperature"] == 1.7
    loaded = load_converted_model(manifest_path)
    for name, tensor in model.state_dict().items():
        expected = tensor.half().to(tensor.dtype) if tensor.is_floating_point() else tensor
        assert torch.equal(loaded.model.state_dict()[name], expected), name


def test_training_only_regularisers_are_left_out_of_a_converted_model(tmp_path):
    """Stochastic depth and dropout are the identity in eval mode: the manifest (whose validator refuses
    an argument naming a "path") records the network without them, and it loads and computes the same."""
    model = get_spec("efficientnet").build(64, anti_alias=1, drop_path_rate=0.2, drop_rate=0.3).eval()
    path = save_converted_model(model, "efficientnet", tmp_path, input_size=64,
                                arch_args={"drop_path_rate": 0.2, "drop_rate": 0.3, "anti_alias": 1})
    assert json.loads(path.read_text())["architecture"]["args"] == {"variant": "lite2", "anti_alias": 1}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = get_spec("efficientnet").build(64, anti_alias=1).eval()
        expected.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                                  for k, v in model.state_dict().items()})
        assert torch.allclose(load_converted_model(path).model(x), expected(x), atol=1e-5)


def _copy_models(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_checksum_mismatch_is_refused_with_file_name(random_models_dir, tmp_path):
    d = _copy_models(random_models_dir, tmp_path / "m")
    weights = d / "swin.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="swin.safetensors.*SHA-256 mismatch"):
        load_converted_model(d / "swin.json")


def test_truncated_file_is_refused(random_models_dir, tmp_path):
    d = _copy_models(random_models_dir, tmp_path / "m")
    weights = d / "xception.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="xception.safetensors"):
        load_converted_model(d / "xception.json")


def test_pickle_is_refused_even_with_matching_checksum(random_models_dir, tmp_path):
    d = _copy_models(random_models_dir, tmp_path / "m")
    weights = d / "efficientnet.safetensors"
    torch.save({"x": torch.zeros(3)}, weights)  # a pickle under the expected name
    manifest = json.loads((d / "efficientnet.json").read_text())
    manifest["sha256"] = sha256_of(weights)
    (d / "efficientnet.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="efficientnet.safetensors: not a valid safetensors"):
        load_converted_model(d / "efficientnet.json")


def test_missing_and_broken_models_leave_the_others_working(random_models_dir, tmp_path, astronaut):
    d = _copy_models(random_models_dir, tmp_path / "m")
    (d / "swin.safetensors").unlink()
    (d / "xception.json").unlink()
    engine = ScoringEngine(d, runtime="torch")
    assert engine.status["swin"].state == "error" and "swin.safetensors" in engine.status["swin"].message
    assert engine.status["xception"].state == "missing"
    assert engine.loaded_keys == ["efficientnet", "cross_attention", "cnn_transformer"]
    result = engine.score_crops([astronaut[:200, 150:350]])
    assert set(result.model_probabilities) == set(engine.loaded_keys)
    assert 0.0 <= result.ensemble_probability[0] <= 1.0


def test_building_a_model_waits_for_another_thread_s_heavy_imports(two_random_models_dir):
    """The face finder is built beside the engine (pipeline.load_engine); both may import torchvision
    for the first time, and two threads importing it at once can get a partially initialised module
    (a model then failed to load at random in CI). Building a module takes the same lock as the
    face finder's warm-up, so the two imports never overlap."""
    import threading

    from model_store import discover_manifests
    from process_wide import heavy_imports

    manifest = discover_manifests(two_random_models_dir)["cross_attention"]
    done = threading.Event()

    def load() -> None:
        load_converted_model(manifest, build_module=True)
        done.set()

    with heavy_imports:                                  # as the face finder's warm-up holds it
        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        assert not done.wait(3.0)                       # the build waits for the lock...
    assert done.wait(60.0)                              # ...and goes on once it is released
    loader.join(5.0)

"""Model files are data, never code: only safetensors are read, after their SHA-256 is checked.

An attacker who can write into converted_models/ can replace both files of a model (so a matching
checksum proves nothing about intent): even then nothing is unpickled, imported or executed, and
every refusal is a ModelFileError naming the file. A bad model never takes the others down.
"""
from __future__ import annotations

import builtins
import hashlib
import io
import json
import pickle
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch

import model_store
from model_store import ModelFileError, load_converted_model, sha256_of
from scoring import ScoringEngine

KEY = "cnn_transformer"          # the smallest of the five at 64 px (about 9 MB)
OTHER = "cross_attention"
REAL_PICKLE_LOADS = pickle.loads


class CreatesMarker:
    """Unpickling this object opens (creates) the marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@pytest.fixture
def model_dir(random_models_dir, tmp_path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    for key in (KEY, OTHER):
        for ext in (".json", ".safetensors"):
            shutil.copy(random_models_dir / f"{key}{ext}", d / f"{key}{ext}")
    return d


def manifest_of(d: Path, key: str = KEY) -> dict:
    return json.loads((d / f"{key}.json").read_text())


def write_manifest(d: Path, manifest: dict, key: str = KEY) -> Path:
    path = d / f"{key}.json"
    path.write_text(json.dumps(manifest))
    return path


def replace_weights(d: Path, data: bytes, *, update_checksum: bool, key: str = KEY) -> Path:
    """Swap the weights file; with update_checksum the manifest is rewritten to match (an attacker
    who controls the folder can do both)."""
    (d / f"{key}.safetensors").write_bytes(data)
    if update_checksum:
        manifest = manifest_of(d, key)
        manifest["sha256"] = hashlib.sha256(data).hexdigest()
        write_manifest(d, manifest, key)
    return d / f"{key}.json"


@pytest.fixture
def load_file_spy(monkeypatch):
    """Records every call of the safetensors reader, to prove the checksum is checked first."""
    calls = []
    real = model_store.load_file

    def spy(path, *a, **kw):
        calls.append(path)
        return real(path, *a, **kw)

    monkeypatch.setattr(model_store, "load_file", spy)
    return calls


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    """Any unpickling during these tests fails the test (the models are loaded without pickle)."""
    def forbidden(*a, **kw):
        raise AssertionError("pickle used while loading a model")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)


def test_a_good_copy_loads(model_dir, load_file_spy):
    loaded = load_converted_model(model_dir / f"{KEY}.json")
    assert loaded.key == KEY and loaded.input_size == 64
    assert load_file_spy == [str(model_dir / f"{KEY}.safetensors")]


@pytest.mark.parametrize("weights_file", [f"{KEY}.pt", f"{KEY}.pth", f"{KEY}.bin", f"{KEY}.pkl", f"{KEY}.onnx",
                                          f"{KEY}.safetensors.pt", "../models/cnn_transformer.safetensors",
                                          "/etc/passwd", "", None, 42])
def test_only_safetensors_in_the_same_folder_are_read(model_dir, weights_file, load_file_spy):
    manifest = manifest_of(model_dir)
    manifest["weights_file"] = weights_file
    path = write_manifest(model_dir, manifest)
    with pytest.raises(ModelFileError) as info:
        load_converted_model(path)
    assert str(path) in str(info.value)
    assert load_file_spy == []


def test_checksum_is_verified_before_the_file_is_parsed(model_dir, load_file_spy):
    weights = model_dir / f"{KEY}.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01                           # one bit in the middle of the tensors
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"cnn_transformer\.safetensors: SHA-256 mismatch"):
        load_converted_model(model_dir / f"{KEY}.json")
    assert load_file_spy == []


@pytest.mark.parametrize("sha", ["0" * 64, "not a checksum", "", None, 7])
def test_wrong_or_missing_checksum_is_refused(model_dir, sha, load_file_spy):
    manifest = manifest_of(model_dir)
    manifest["sha256"] = sha
    path = write_manifest(model_dir, manifest)
    with pytest.raises(ModelFileError, match="cnn_transformer"):
        load_converted_model(path)
    assert load_file_spy == []


def test_oversized_weights_are_refused_before_hashing(model_dir, monkeypatch):
    monkeypatch.setattr(model_store, "MAX_WEIGHTS_BYTES", 1000)
    monkeypatch.setattr(model_store, "sha256_of", lambda p: pytest.fail("hashed an oversized file"))
    with pytest.raises(ModelFileError, match=r"cnn_transformer\.safetensors: larger than 1000 bytes"):
        load_converted_model(model_dir / f"{KEY}.json")


def test_plain_pickle_with_matching_checksum_is_refused(model_dir):
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(3)}, buffer)           # a state dict in torch's pickle format
    path = replace_weights(model_dir, buffer.getvalue(), update_checksum=True)
    with pytest.raises(ModelFileError, match=r"cnn_transformer\.safetensors: not a valid safetensors file"):
        load_converted_model(path)


@pytest.mark.parametrize("update_checksum", [True, False])
def test_malicious_pickle_is_never_executed(model_dir, tmp_path, update_checksum):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": CreatesMarker(marker)}, protocol=2)
    # The payload is live: unpickling the same construction creates its marker file.
    probe = tmp_path / "probe"
    REAL_PICKLE_LOADS(pickle.dumps(CreatesMarker(probe))).close()
    assert probe.exists()
    path = replace_weights(model_dir, payload, update_checksum=update_checksum)
    with pytest.raises(ModelFileError, match=r"cnn_transformer\.safetensors"):
        load_converted_model(path)
    engine = ScoringEngine(model_dir, keys=[KEY], runtime="torch")
    assert engine.status[KEY].state == "error" and not engine.models
    assert not marker.exists()


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.5, 0.999])
def test_truncated_safetensors_is_refused(model_dir, fraction):
    data = (model_dir / f"{KEY}.safetensors").read_bytes()
    data = data[: int(len(data) * fraction)]
    path = replace_weights(model_dir, data, update_checksum=True)
    with pytest.raises(ModelFileError, match=r"cnn_transformer\.safetensors: not a valid safetensors file"):
        load_converted_model(path)


def test_safetensors_header_that_lies_is_refused(model_dir):
    """A header declaring an absurd length, or tensors beyond the end of the data."""
    huge = struct.pack("<Q", 2**40) + b"{}"
    path = replace_weights(model_dir, huge, update_checksum=True)
    with pytest.raises(ModelFileError, match="not a valid safetensors file"):
        load_converted_model(path)
    header = json.dumps({"w": {"dtype": "F16", "shape": [100000, 100000], "data_offsets": [0, 2 * 10**10]}}).encode()
    path = replace_weights(model_dir, struct.pack("<Q", len(header)) + header + b"\0" * 16, update_checksum=True)
    with pytest.raises(ModelFileError, match="not a valid safetensors file"):
        load_converted_model(path)


@pytest.mark.parametrize("architecture", [
    {"name": "resnet50"}, {"name": "os.system"}, {"name": "__import__"}, {"name": None}, "cnn_transformer",
    {"name": "cnn_transformer", "args": {"nested": {"a": 1}}},
    {"name": "cnn_transformer", "args": ["x"]},
])
def test_unknown_or_malformed_architecture_is_refused(model_dir, architecture, load_file_spy):
    manifest = manifest_of(model_dir)
    manifest["architecture"] = architecture
    path = write_manifest(model_dir, manifest)
    with pytest.raises(ModelFileError) as info:
        load_converted_model(path)
    assert str(path) in str(info.value)
    assert load_file_spy == []


def test_manifest_never_imports_or_executes_what_it_names(model_dir, tmp_path, monkeypatch):
    """A module on sys.path named by the manifest is not imported; code in strings is not run."""
    marker = tmp_path / "imported"
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "evil_arch_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(module_dir))
    code = f"__import__('builtins').open({str(marker)!r}, 'w')"
    for architecture in ({"name": "evil_arch_module"}, {"name": "evil_arch_module.Net"},
                         {"name": KEY, "args": {"depth": code}}, {"name": KEY, "args": {"__class__": code}}):
        manifest = manifest_of(model_dir)
        manifest.update(architecture=architecture, title=code, note=code, crop={"y_shift": code})
        path = write_manifest(model_dir, manifest)
        with pytest.raises(ModelFileError, match=re.escape(str(path))):
            load_converted_model(path)
    assert "evil_arch_module" not in sys.modules
    assert not marker.exists()


@pytest.mark.parametrize("arg", ["checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir",
                                 "pretrained", "pretrained_trunk", "weights_file", "__class__"])
def test_args_that_would_make_a_builder_read_files_are_refused(model_dir, tmp_path, arg, load_file_spy):
    """timm.create_model(checkpoint_path=...) would read (unpickle) any file the manifest names."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(CreatesMarker(marker)))
    for key in (KEY, "xception"):
        manifest = manifest_of(model_dir)
        manifest.update(key=key, architecture={"name": key, "args": {arg: str(evil)}})
        path = write_manifest(model_dir, manifest)
        with pytest.raises(ModelFileError, match=re.escape(f"{path}: architecture arg {arg!r} is not allowed")):
            load_converted_model(path)
    assert load_file_spy == [] and not marker.exists()


@pytest.mark.parametrize("args,message", [
    ({"heads": 3}, "architecture args rejected (AssertionError"),        # dim 256 is not divisible by 3
    ({"dim": -1}, "architecture args rejected"),
    ({"depth": "four"}, "architecture args rejected (TypeError"),
    ({"unknown_knob": 1}, "architecture args rejected (TypeError"),
    ({"dropout": 5000.0}, "out of range"),       # out-of-range values are harmless even if built:
    ({"heads": -5000}, "out of range"),          # a regression fails this test, not the machine
    ({"dim": float("nan")}, "out of range"),
    ({"dim": float("inf")}, "out of range"),
])
def test_builder_errors_become_model_file_errors(model_dir, args, message):
    manifest = manifest_of(model_dir)
    manifest["architecture"] = {"name": KEY, "args": args}
    path = write_manifest(model_dir, manifest)
    with pytest.raises(ModelFileError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
        load_converted_model(path)


def test_args_for_a_huge_model_are_refused_without_allocating_it(model_dir, monkeypatch):
    """dim=4096, depth=512 would be ~100 G parameters: compared on the meta device, never built.

    The architecture's constructor is wrapped so that a build off the meta device fails at once
    (a regression must fail this test, not exhaust the machine's memory)."""
    import architectures

    real, devices = architectures.CNNTransformer, []

    def guarded(*args, **kwargs):
        devices.append(torch.get_default_device().type)
        if devices[-1] != "meta":
            raise AssertionError("the huge model was about to be allocated")
        return real(*args, **kwargs)

    monkeypatch.setattr(architectures, "CNNTransformer", guarded)
    manifest = manifest_of(model_dir)
    manifest["architecture"] = {"name": KEY, "args": {"dim": 4096, "depth": 512, "heads": 8}}
    path = write_manifest(model_dir, manifest)
    with pytest.raises(ModelFileError, match="weights do not fit architecture 'cnn_transformer'"):
        load_converted_model(path)
    assert devices == ["meta"]


def test_unknown_variant_does_not_take_the_engine_down(model_dir, random_models_dir):
    """A builder's KeyError (swin variant) is one model's error, not the engine's."""
    for ext in (".json", ".safetensors"):
        shutil.copy(random_models_dir / f"swin{ext}", model_dir / f"swin{ext}")
    swin = manifest_of(model_dir, "swin")
    swin["architecture"] = {"name": "swin", "args": {"variant": "gigantic"}}
    write_manifest(model_dir, swin, "swin")
    engine = ScoringEngine(model_dir, keys=["swin", KEY], runtime="torch")
    assert engine.status["swin"].state == "error" and "KeyError" in engine.status["swin"].message
    assert engine.status[KEY].state == "loaded"


def test_weights_of_the_wrong_shape_are_refused(model_dir, random_models_dir):
    # (a) the manifest says 128 px: the position embedding of these 64 px weights does not fit.
    manifest = manifest_of(model_dir)
    manifest["input_size"] = 128
    path = write_manifest(model_dir, manifest)
    with pytest.raises(ModelFileError, match=r"cnn_transformer\.safetensors: weights do not fit architecture "
                                             r"'cnn_transformer' \(.*wrong shapes"):
        load_converted_model(path)
    # (b) another architecture's weights under this manifest (checksum updated to match).
    path = replace_weights(model_dir, (random_models_dir / f"{OTHER}.safetensors").read_bytes(), update_checksum=True)
    with pytest.raises(ModelFileError, match="weights do not fit architecture 'cnn_transformer'"):
        load_converted_model(path)


@pytest.mark.parametrize("content", [b"", b"{", b"[1, 2]", b"\xff\xfe\x00garbage", b"null"])
def test_unreadable_manifest_is_refused(model_dir, content):
    (model_dir / f"{KEY}.json").write_bytes(content)
    with pytest.raises(ModelFileError, match=r"cnn_transformer\.json"):
        load_converted_model(model_dir / f"{KEY}.json")


def test_bad_models_leave_the_others_working(model_dir, astronaut):
    """One tampered, one missing weights file, three absent: the engine serves the one good model."""
    data = bytearray((model_dir / f"{OTHER}.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (model_dir / f"{OTHER}.safetensors").write_bytes(bytes(data))
    shutil.copy(model_dir / f"{KEY}.json", model_dir / "swin.json")      # swin: manifest without weights
    swin = manifest_of(model_dir, "swin")
    swin.update(key="swin", architecture={"name": "swin", "args": {}}, weights_file="swin.safetensors")
    write_manifest(model_dir, swin, "swin")
    (model_dir / "ensemble.json").write_text("{not json")                   # broken ensemble: equal weights

    engine = ScoringEngine(model_dir, runtime="torch")
    states = {k: s.state for k, s in engine.status.items()}
    assert states == {"xception": "missing", "efficientnet": "missing", "swin": "error",
                      "cross_attention": "error", KEY: "loaded"}
    assert "SHA-256 mismatch" in engine.status[OTHER].message and f"{OTHER}.safetensors" in engine.status[OTHER].message
    assert "swin.safetensors: weights file missing" in engine.status["swin"].message
    assert "xception.json not found" in engine.status["xception"].message
    assert engine.loaded_keys == [KEY] and engine.ensemble_manifest is None
    result = engine.score_crops([astronaut[60:180, 170:290], astronaut[:100, :100]])
    assert result.models_used == [KEY] and len(result) == 2
    assert all(0.0 <= p <= 1.0 for p in result.ensemble_probability)


def test_sha256_of_matches_hashlib(model_dir):
    path = model_dir / f"{KEY}.safetensors"
    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest() == manifest_of(model_dir)["sha256"]

"""Converted-model format (GUIDE.md section 4): `<key>.safetensors` (fp16) + `<key>.json` manifest.

Loading never unpickles: the weights are read with safetensors, after the file's SHA-256 has been
checked against the manifest, and the architecture is built from the registry (nothing named in a
manifest is imported or executed). Every refusal raises `ModelFileError` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from faces import CANONICAL_CROP_SIZE, CROP_Y_SHIFT
from fileio import atomic_write_bytes, atomic_write_json, sha256_of  # noqa: F401 - also imported from here
from process_wide import heavy_imports
from registry import ENSEMBLE_KEY, MODEL_KEYS, MODEL_REGISTRY, get_spec, inference_arch_args

FORMAT_VERSION = 1
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent / "converted_models"
# Face-crop geometry shared by training data and inference (GUIDE.md section 3), recorded in manifests.
DEFAULT_CROP = {"side": "mean(width, height) of the MTCNN box", "y_shift": CROP_Y_SHIFT,
                "canonical_size": CANONICAL_CROP_SIZE}
# A converted model larger than this is refused before hashing (no legitimate model is near it).
MAX_WEIGHTS_BYTES = 1_000_000_000
# Manifest architecture args are hyper-parameters (dim, depth, heads, variant, ...). Numbers are bounded,
# and names that would make a builder read a file or fetch a config (timm.create_model's
# checkpoint_path, pretrained_cfg, cache_dir, ...) are refused.
MAX_ARCH_ARG_VALUE = 4096
FORBIDDEN_ARCH_ARG_WORDS = ("path", "file", "dir", "url", "cfg", "checkpoint", "pretrained", "cache", "hub")


# A fixed input and the converted model's logits on it ("check_logits" in the manifest): a faster runtime
# (fast_runtime.OnnxRunner) proves that its graph computes this model by reproducing them, without
# building the torch module. Made from a formula, not a random generator, so that it never changes.
CHECK_BATCH = 2             # images: differs from the exporter's 1, so a batch size baked into a graph fails


def check_batch(input_size: int) -> torch.Tensor:
    """The fixed (CHECK_BATCH, 3, S, S) input whose logits every manifest records."""
    index = torch.arange(CHECK_BATCH * 3 * input_size * input_size, dtype=torch.float64)
    return (1.5 * torch.sin(index * 0.7311 + 0.25)).reshape(CHECK_BATCH, 3, input_size, input_size).float()


def check_logits(model: nn.Module, input_size: int) -> list[float]:
    with torch.inference_mode():
        return [float(v) for v in model.eval()(check_batch(input_size)).float().reshape(-1)]


def recorded_check_logits(manifest: dict) -> np.ndarray | None:
    """The manifest's check logits if present and well-formed, else None."""
    values = manifest.get("check_logits")
    if not isinstance(values, list) or len(values) != CHECK_BATCH or \
            not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    return np.asarray(values, dtype=np.float32)


class ModelFileError(Exception):
    """A converted model that cannot be used; the message names the file and the reason."""


class LoadedModel:
    """A verified converted model: its manifest and its torch module.

    The torch module is built when first used (`load_converted_model(..., build_module=False)`) and
    can be released again (`release_module`): a faster runtime that holds its own copy of the weights
    (fast_runtime.OnnxRunner) never needs it for scores, and the five modules are ~300 MB of fp32
    weights and seconds of start-up. Whatever needs it (an explanation, an export) gets it built from
    the file, fully verified, and refused if the file no longer has the checksum it had when the
    manifest was first loaded."""

    def __init__(self, key: str, model: nn.Module | None, manifest: dict, manifest_path: Path | None = None):
        self.key = key
        self.manifest = manifest
        self.manifest_path = manifest_path
        self._model: nn.Module | None = model
        self._module_lock = threading.Lock()
        self.builds = int(model is not None)     # times the torch module was built from the file

    @property
    def model(self) -> nn.Module:
        with self._module_lock:
            if self._model is None:
                # Never build it as inference tensors (a caller may be inside inference_mode): the
                # module must stay usable for gradients (Grad-CAM) and for ONNX export.
                with torch.inference_mode(False):
                    again = load_converted_model(self.manifest_path)
                if again.manifest["sha256"] != self.manifest["sha256"]:
                    raise ModelFileError(f"{self.manifest_path}: the model changed on disk since it was loaded "
                                         f"(restart to use the new one)")
                self._model = again._model
                self.builds += 1
            return self._model

    @property
    def module_loaded(self) -> bool:
        return self._model is not None

    def release_module(self) -> None:
        """Drop the torch module (rebuilt on next use); kept if there is no file to rebuild it from."""
        if self.manifest_path is not None:
            with self._module_lock:
                self._model = None

    @property
    def input_size(self) -> int:
        return int(self.manifest["input_size"])

    @property
    def temperature(self) -> float:
        return float(self.manifest.get("temperature", 1.0))

    @property
    def threshold(self) -> float:
        return float(self.manifest.get("threshold", 0.5))


def save_converted_model(model: nn.Module, key: str, out_dir: str | os.PathLike, *, input_size: int,
                         arch_args: dict | None = None, temperature: float = 1.0, threshold: float = 0.5,
                         extra: dict | None = None) -> Path:
    """Write `<key>.safetensors` (fp16) and `<key>.json`; returns the manifest path.

    The pair is replaced so that a crash at any moment leaves a manifest whose weights file exists
    and matches its checksum (the old model or the new one, never new weights under the old
    manifest): the new weights are first written as `<key>.incoming.safetensors` and the manifest
    points there while `<key>.safetensors` is replaced."""
    spec = get_spec(key)
    # Defaults recorded: a later default cannot change this model. Training-only regularisers (stochastic
    # depth, dropout) are left out: identity in eval mode, so the served network is the same without them.
    arch_args = inference_arch_args(spec.arch_args(**(arch_args or {})))
    mean, std = spec.normalisation(arch_args)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{key}.safetensors"
    state = {name: t.detach().to("cpu", torch.float16 if t.is_floating_point() else t.dtype).contiguous()
             for name, t in model.state_dict().items()}
    data = save(state, metadata={"key": key, "format_version": str(FORMAT_VERSION)})
    # The model as load_converted_model will build it: from the registry, with the fp16 weights (its
    # random initialisation must not move the caller's random stream: write_random_models relies on it).
    with torch.random.fork_rng(devices=[]):
        as_loaded = spec.build(int(input_size), pretrained=False, **arch_args)
    as_loaded.load_state_dict(state)
    manifest = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "title": spec.title,
        "architecture": {"name": key, "args": arch_args},
        "input_size": int(input_size),
        "mean": list(mean),
        "std": list(std),
        "crop": DEFAULT_CROP,
        "temperature": float(temperature),
        "threshold": float(threshold),
        "weights_file": weights_path.name,
        "weights_dtype": "float16",
        "sha256": hashlib.sha256(data).hexdigest(),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "check_logits": check_logits(as_loaded, int(input_size)),
        **(extra or {}),
    }
    manifest_path = out_dir / f"{key}.json"
    staged = out_dir / f"{key}.incoming.safetensors"
    atomic_write_bytes(staged, data)
    atomic_write_json(manifest_path, {**manifest, "weights_file": staged.name})
    atomic_write_bytes(weights_path, data)
    atomic_write_json(manifest_path, manifest)
    staged.unlink(missing_ok=True)
    return manifest_path


def write_random_models(out_dir: str | os.PathLike, keys=MODEL_KEYS, size: int = 64, seed: int = 0,
                        extra: dict | None = None, ensemble: bool = True) -> Path:
    """Random-weight converted models of `keys` (deterministic: same seed, same weights, same ONNX cache
    key) and, with `ensemble`, an ensemble.json of equal weights summing to 1. For the tests and the
    benchmark, which must not depend on trained weights."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    for key in keys:
        model = get_spec(key).build(size, pretrained=False)
        save_converted_model(model, key, out_dir, input_size=size, temperature=1.0, threshold=0.5, extra=extra)
    if ensemble:
        weights = {k: 1.0 / len(keys) for k in keys}
        atomic_write_json(out_dir / f"{ENSEMBLE_KEY}.json",
                          {"key": ENSEMBLE_KEY, "weights": weights, "bias": 0.0, "threshold": 0.5})
    return out_dir


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: manifest not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ModelFileError(f"{path}: manifest must be a JSON object")
    return manifest


def _validated_manifest(manifest_path: Path) -> dict:
    manifest = read_manifest(manifest_path)
    arch = manifest.get("architecture")
    name = arch.get("name") if isinstance(arch, dict) else None
    if name not in MODEL_REGISTRY:
        raise ModelFileError(f"{manifest_path}: unknown architecture {name!r} "
                             f"(known: {', '.join(MODEL_REGISTRY)})")
    args = arch.get("args", {})
    if not isinstance(args, dict) or not all(isinstance(v, (int, float, str, bool)) for v in args.values()):
        raise ModelFileError(f"{manifest_path}: architecture args must be a flat object of numbers/strings")
    for arg, value in args.items():
        if arg.startswith("_") or any(word in arg.lower() for word in FORBIDDEN_ARCH_ARG_WORDS):
            raise ModelFileError(f"{manifest_path}: architecture arg {arg!r} is not allowed")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                not (math.isfinite(value) and abs(value) <= MAX_ARCH_ARG_VALUE):
            raise ModelFileError(f"{manifest_path}: architecture arg {arg}={value!r} is out of range "
                                 f"(|value| <= {MAX_ARCH_ARG_VALUE})")
    size = manifest.get("input_size")
    if not isinstance(size, int) or not 32 <= size <= 1024:
        raise ModelFileError(f"{manifest_path}: input_size must be an integer in [32, 1024], got {size!r}")
    temp = manifest.get("temperature", 1.0)
    if not isinstance(temp, (int, float)) or not 0.01 <= temp <= 100:
        raise ModelFileError(f"{manifest_path}: temperature must be a number in [0.01, 100]")
    weights_file = manifest.get("weights_file", "")
    if not isinstance(weights_file, str) or Path(weights_file).name != weights_file or not weights_file:
        raise ModelFileError(f"{manifest_path}: weights_file must be a plain file name in the same folder")
    if not weights_file.endswith(".safetensors"):
        raise ModelFileError(f"{manifest_path}: only .safetensors weights are loaded, not {weights_file!r}")
    if not isinstance(manifest.get("sha256"), str) or len(manifest["sha256"]) != 64:
        raise ModelFileError(f"{manifest_path}: manifest has no valid sha256")
    return manifest


def load_converted_model(manifest_path: str | os.PathLike, build_module: bool = True) -> LoadedModel:
    """Verify and load one converted model; raises ModelFileError with a message naming the file.

    With build_module=False the manifest and the weights' size and checksum are verified but the torch
    module is built (and the weights parsed and shape-checked) only when first used; manifests without
    check logits are built at once, since a faster runtime could not prove its graph without them."""
    manifest_path = Path(manifest_path)
    manifest = _validated_manifest(manifest_path)
    weights_path = manifest_path.parent / manifest["weights_file"]
    if not weights_path.is_file():
        raise ModelFileError(f"{weights_path}: weights file missing")
    if weights_path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise ModelFileError(f"{weights_path}: larger than {MAX_WEIGHTS_BYTES} bytes, refused")
    actual = sha256_of(weights_path)
    if actual != manifest["sha256"]:
        raise ModelFileError(f"{weights_path}: SHA-256 mismatch (manifest {manifest['sha256'][:12]}..., "
                             f"file {actual[:12]}...): the file was modified or is incomplete")
    key = manifest["key"] if manifest.get("key") in MODEL_REGISTRY else manifest["architecture"]["name"]
    if not build_module and recorded_check_logits(manifest) is not None:
        return LoadedModel(key=key, model=None, manifest=manifest, manifest_path=manifest_path)
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError or anything else the parser raises: refused
        raise ModelFileError(f"{weights_path}: not a valid safetensors file ({exc})") from None
    spec = get_spec(manifest["architecture"]["name"])
    args = manifest["architecture"].get("args", {})
    try:
        # First on the meta device (no memory, no initialisation): arguments that would build a huge
        # model are caught by the shape check below before anything is allocated.
        # Building imports timm or torchvision the first time: not beside another thread doing the
        # same (process_wide.heavy_imports).
        with heavy_imports, torch.device("meta"):
            skeleton = spec.build(manifest["input_size"], pretrained=False, **args)
    except Exception as exc:  # noqa: BLE001 - a builder may raise anything for arguments it rejects
        raise ModelFileError(f"{manifest_path}: architecture args rejected ({type(exc).__name__}: {exc})") from None
    expected = skeleton.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "",
            f"wrong shapes {wrong[:3]}" if wrong else "") if part)
        raise ModelFileError(f"{weights_path}: weights do not fit architecture {spec.key!r} ({detail})")
    try:
        with heavy_imports:
            model = spec.build(manifest["input_size"], pretrained=False, **args)
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"{manifest_path}: architecture args rejected ({type(exc).__name__}: {exc})") from None
    state = {k: (v.to(expected[k].dtype)) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    return LoadedModel(key=key, model=model, manifest=manifest, manifest_path=manifest_path)


def ensure_check_logits(manifest_path: str | os.PathLike) -> None:
    """Record the check logits in an installed model's manifest converted before manifests had them
    (the module is built and verified from the file); nothing to do for any other manifest."""
    if recorded_check_logits(read_manifest(manifest_path)) is not None:
        return
    loaded = load_converted_model(manifest_path)
    manifest = read_manifest(manifest_path)
    manifest["check_logits"] = check_logits(loaded.model, loaded.input_size)
    atomic_write_json(manifest_path, manifest)


def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict, dict]:
    """A training checkpoint's model, built from the registry with the checkpoint's weights, in eval
    mode; with its training config and the checkpoint itself. For the converter and the distiller."""
    from training_engine import load_checkpoint   # the training side reads its own format

    ckpt = load_checkpoint(Path(path))
    config = json.loads(ckpt["config"])
    model = get_spec(config["model"]).build(config["input_size"], pretrained=False, **config.get("arch_args", {}))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, config, ckpt


def discover_manifests(models_dir: str | os.PathLike = DEFAULT_MODELS_DIR) -> dict[str, Path]:
    """Model key -> manifest path for every registered model with a manifest in the folder."""
    models_dir = Path(models_dir)
    return {key: models_dir / f"{key}.json" for key in MODEL_REGISTRY if (models_dir / f"{key}.json").exists()}


def load_ensemble_manifest(models_dir: str | os.PathLike = DEFAULT_MODELS_DIR) -> dict | None:
    path = Path(models_dir) / f"{ENSEMBLE_KEY}.json"
    if not path.exists():
        return None
    manifest = read_manifest(path)
    weights = manifest.get("weights")
    if not isinstance(weights, dict) or not all(
            k in MODEL_REGISTRY and isinstance(v, (int, float)) for k, v in weights.items()):
        raise ModelFileError(f"{path}: 'weights' must map model keys to numbers")
    return manifest

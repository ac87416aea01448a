"""Scoring engine: face crops in, each model's calibrated P(fake) and the ensemble's out.

Models are loaded once from `converted_models/` (verified, see model_store). Crops are scored in
batches per model, never one face at a time. P(fake) = sigmoid(logit / T) with the temperature T
fitted on the validation split. The ensemble combines the calibrated logits with weights learned on
the validation split (converted_models/ensemble.json); without that file, or when some members are
switched off, it falls back to the weighted mean of the members that are on.

The engine is safe to share between threads (Streamlit sessions): models are only read, and every
use of a model's torch module (a torch forward pass, an explanation's hooks) holds its runner's lock.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import cv2
import numpy as np
import torch
from torch import nn

from model_store import (DEFAULT_MODELS_DIR, LoadedModel, ModelFileError, discover_manifests,
                         load_converted_model, load_ensemble_manifest)
from registry import EIGHT_VIEW_SHIFTS, ENSEMBLE_KEY, MODEL_KEYS, get_spec

log = logging.getLogger("scoring")

DEFAULT_THRESHOLD = 0.5
MAX_BATCH = 32              # crops per model call without test-time views
MAX_IMAGES_PER_CALL = 64    # images per model call with them (crops x views; see model_logits)
TTA_POLICIES = ("voters", "all", "none")   # which members average test-time views (ScoringEngine)
VIEW_SOURCES = ("manifest", "registry")    # where a member's views come from (ScoringEngine.views_for)


def shifted(batch: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """A batch's content moved `dx` pixels right and `dy` down, the edge pixels repeated into the gap."""
    h, w = batch.shape[2:]
    return torch.nn.functional.pad(batch, (dx, 0, dy, 0), mode="replicate")[:, :, :h, :w]


# What a model that uses test-time views averages, recorded in each manifest in words
# (`test_time_augmentation`) and as the moves (`test_time_shifts`, which the engine reads): the
# temperature is fitted on these logits, so a member whose registry entry now gives it other views is
# recalibrated (convert_models.py --ensemble). Keyed by the diagonal moves of `test_time_shifts`.
TEST_TIME_VIEWS = "the crop and its mirror image, each also moved one pixel right and down (mean of four logits)"
VIEW_WORDS = {
    (0, 1): TEST_TIME_VIEWS,
    EIGHT_VIEW_SHIFTS: "the crop and its mirror image, each also moved one, two and three pixels right and down "
                  "(mean of eight logits)",
}


def diagonal_views(batch: torch.Tensor, shifts=(0, 1)) -> list[torch.Tensor]:
    """The views of a normalised NCHW batch whose logits are averaged: the crop and its mirror image,
    each moved by every one of `shifts` pixels right and down, view by view in that order.

    Why these: the models' scores wobble as a face moves across the grid of their strided layers,
    with a period of about two pixels of their input (docs/training.md, session 35), so the same face
    found a pixel away moved the ensemble by up to 0.08 (issue 11). The mirror lands x on the other
    phase of the stride-2 grid (the inputs have an even width), the one-pixel move both x and y, so
    (0, 1) covers every phase of it; moves of two and three pixels add the other phase of the stride-4
    layers (session 37), where views a whole period apart (3 % of the side, session 2) wobble together
    and did not help. Moving the mirror image the same way keeps the set closed under mirroring: a
    mirrored face gets the same views, so its score is exactly the same."""
    mirrored = batch.flip(3)
    return [shifted(x, d, d) if d else x for d in shifts for x in (batch, mirrored)]


def tta_views(batch: torch.Tensor) -> list[torch.Tensor]:
    """Four views: the crop, its mirror image, both a pixel right and down (Xception's since session 38)."""
    return diagonal_views(batch, (0, 1))


def views_of(key: str) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The test-time views of one model (the registry's `test_time_shifts`)."""
    return partial(diagonal_views, shifts=get_spec(key).test_time_shifts)


def view_words(key: str) -> str:
    """What `key`'s manifest records as its test-time views when it uses them."""
    return VIEW_WORDS[get_spec(key).test_time_shifts]


MAX_VIEW_SHIFT = 7    # pixels; a manifest's moves are bounded, so a swapped manifest cannot ask for unbounded work


def recorded_shifts(manifest: dict) -> tuple[int, ...] | None:
    """The diagonal moves of the test-time views a member's temperature was fitted on, as its manifest
    records them: `test_time_shifts` (written since session 39), else the moves its
    `test_time_augmentation` words name (older manifests). None when it records no views, or moves
    this code does not accept (distinct whole pixels 0-MAX_VIEW_SHIFT, 0 first): the caller then
    falls back to the registry's."""
    shifts = manifest.get("test_time_shifts")
    if shifts is not None:
        valid = isinstance(shifts, list) and shifts and shifts[0] == 0 and len(set(shifts)) == len(shifts) and \
            all(type(d) is int and 0 <= d <= MAX_VIEW_SHIFT for d in shifts)
        if valid:
            return tuple(shifts)
        log.warning("%s: ignoring test_time_shifts %r (expected distinct whole pixels 0-%d, 0 first)",
                    manifest.get("key"), shifts, MAX_VIEW_SHIFT)
    words = manifest.get("test_time_augmentation")
    return next((shifts for shifts, text in VIEW_WORDS.items() if text == words), None)


def view_count(views: Callable[[torch.Tensor], list[torch.Tensor]]) -> int:
    return len(views(torch.zeros(1, 1, 4, 4)))


class NoModelsError(RuntimeError):
    pass


def no_models_message(models_dir) -> str:
    return (f"no detector models are installed in {models_dir}. The repository ships them in "
            f"converted_models/ (restore with `git checkout -- converted_models`), or train and convert "
            f"your own: see README, 'Training'.")


@dataclass
class ModelStatus:
    key: str
    title: str
    state: str                 # "loaded", "missing" or "error"
    message: str = ""
    input_size: int | None = None
    test_auc: float | None = None
    num_parameters: int | None = None


@dataclass
class ScoreResult:
    """Scores of N faces: per-model calibrated logits/probabilities and the ensemble's."""
    model_logits: dict[str, np.ndarray]
    model_probabilities: dict[str, np.ndarray]
    ensemble_probability: np.ndarray
    models_used: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ensemble_probability)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def prepare_batch(crops: list[np.ndarray], size: int, mean, std, interpolation: int | None = None) -> torch.Tensor:
    """uint8 RGB crops -> normalised float (N, 3, size, size), resized as in training (antialiased), or
    with the cv2 `interpolation` given (the stability check's other filter)."""
    def resample(c: np.ndarray) -> np.ndarray:
        if c.shape[0] == size and c.shape[1] == size:
            return c
        if interpolation is None:
            return cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA if c.shape[0] > size else cv2.INTER_LINEAR)
        return cv2.resize(c, (size, size), interpolation=interpolation)

    resized = [resample(c) for c in crops]
    x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).contiguous(memory_format=torch.channels_last)


@runtime_checkable
class Runner(Protocol):
    """What the engine needs of a model runner (TorchRunner here, fast_runtime.OnnxRunner).

    `model` is the model's torch module, there whatever runs the scores: explanations
    (feature_visualization) hook into it. `lock` guards every use of `model` (a torch forward pass,
    an explanation's hooks and gradients), so an explanation never sees another thread's pass."""

    model: nn.Module
    lock: threading.Lock

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Raw logits (N,) for a normalised NCHW float32 batch; safe to call from several threads."""
        ...


class TorchRunner:
    """Eager PyTorch forward in channels_last (1.3-1.7x faster on this CPU for the CNNs)."""

    def __init__(self, loaded: LoadedModel):
        self.model = loaded.model.to(memory_format=torch.channels_last)
        self.lock = threading.Lock()

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        with self.lock, torch.inference_mode():
            return self.model(batch).float().reshape(-1).numpy()


class ScoringEngine:
    """Loads the installed models and scores face crops with each of them and their ensemble.

    Test-time views: a model that uses them scores every crop several ways (`views_for`: those its
    manifest records, as its registry entry gave them when it was calibrated: the crop and its mirror
    image, each also moved one pixel, `tta_views`, for Xception; one to three pixels, eight views, for
    the cheaper voters, session 38) and averages the raw logits before the temperature. A face and its
    mirror are the same evidence, yet a model alone moved by 0.11 in P(fake) between them, and the
    ensemble by up to 0.08 for a box a pixel away (issue 11). The views run batched (64 images per
    call), at four or eight times the cost of one pass, so `tta="voters"` (the default) spends them only
    where they can change a verdict: on the ensemble's voting members. Advisory members (weight 0, below
    the quality floor) are scored once; the flip moved their P(fake) by under 0.01 on average
    (docs/stability.json) while Xception and Swin are 88 % of one pass of the five models
    (docs/performance.md). "all" / True and "none" / False force them; a call's `fast=True` skips them
    for that call (fast mode)."""

    def __init__(self, models_dir: str | Path = DEFAULT_MODELS_DIR, keys=None, runtime: str = "auto",
                 tta: str | bool = "voters", views_from: str = "manifest"):
        if tta not in TTA_POLICIES and not isinstance(tta, bool):
            raise ValueError(f"tta must be one of {TTA_POLICIES} or a bool, not {tta!r}")
        if views_from not in VIEW_SOURCES:
            raise ValueError(f"views_from must be one of {VIEW_SOURCES}, not {views_from!r}")
        if isinstance(tta, bool):
            tta = "all" if tta else "none"
        self.tta = tta
        # Which views a member that uses them averages (`views_for`): "manifest", those its installed
        # temperature was fitted on (`recorded_shifts`), so a change of the registry's views cannot
        # silently re-score an installed model against a temperature fitted on others; "registry",
        # those the registry gives it now (`views_of`: recalibrating a member onto them, convert_models).
        self.views_from = views_from
        # Experiments map a key to another view function here, which wins over both.
        self.views: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {}
        self.models_dir = Path(models_dir)
        self.status: dict[str, ModelStatus] = {}
        self.models: dict[str, LoadedModel] = {}
        self.runners: dict[str, Runner] = {}
        self.runtime = runtime
        manifests = discover_manifests(self.models_dir)
        for key in (keys or MODEL_KEYS):
            spec = get_spec(key)
            if key not in manifests:
                self.status[key] = ModelStatus(key, spec.title, "missing", f"{self.models_dir / (key + '.json')} not found")
                continue
            try:
                # The torch module is built only if the runner needs it (torch runtime, an ONNX
                # export, a manifest without check logits) or an explanation asks for it.
                loaded = load_converted_model(manifests[key], build_module=runtime == "torch")
                runner = self._runner_for(loaded)
            except ModelFileError as exc:
                log.warning("%s", exc)
                self.status[key] = ModelStatus(key, spec.title, "error", str(exc))
                continue
            self.models[key] = loaded
            self.runners[key] = runner
            test = (loaded.manifest.get("metrics") or {}).get("test") or {}
            self.status[key] = ModelStatus(key, spec.title, "loaded", "", loaded.input_size,
                                           test.get("auc"), loaded.manifest.get("num_parameters"))
        try:
            self.ensemble_manifest = load_ensemble_manifest(self.models_dir)
        except ModelFileError as exc:
            log.warning("%s (falling back to equal weights)", exc)
            self.ensemble_manifest = None

    def _runner_for(self, loaded: LoadedModel) -> Runner:
        if self.runtime in ("auto", "onnx"):
            try:
                from fast_runtime import OnnxRunner  # optional faster CPU path
                return OnnxRunner(loaded)
            except ModelFileError:   # the model itself is unusable (found when its module was built)
                raise
            except Exception as exc:  # noqa: BLE001 - any ONNX problem falls back to torch
                if self.runtime == "onnx":
                    raise
                log.info("ONNX runtime unavailable for %s (%s); using torch", loaded.key, exc)
        return TorchRunner(loaded)

    # ---------------------------------------------------------------------------------------------
    @property
    def loaded_keys(self) -> list[str]:
        return [k for k in MODEL_KEYS if k in self.models]

    @property
    def advisory_keys(self) -> list[str]:
        """Loaded members the ensemble does not vote with (weight 0, e.g. below its quality floor)."""
        return [k for k in self.loaded_keys if is_advisory(self.ensemble_manifest, k)]

    @property
    def default_threshold(self) -> float:
        if self.ensemble_manifest and isinstance(self.ensemble_manifest.get("threshold"), (int, float)):
            return float(self.ensemble_manifest["threshold"])
        return DEFAULT_THRESHOLD

    def views_for(self, key: str) -> Callable[[torch.Tensor], list[torch.Tensor]]:
        """The views `key` averages when it uses them: an override in `views`, else (`views_from`) the
        ones its manifest records, else the registry's (`views_of`: a member calibrated without views
        that now votes, or `views_from="registry"`)."""
        if key in self.views:
            return self.views[key]
        shifts = recorded_shifts(self.models[key].manifest) \
            if self.views_from == "manifest" and key in self.models else None
        return partial(diagonal_views, shifts=shifts) if shifts else views_of(key)

    def uses_tta(self, key: str) -> bool:
        """Whether `key`'s scores average the test-time views (see the class docstring)."""
        if self.tta != "voters":
            return self.tta == "all"
        return key not in self.advisory_keys

    def require_models(self) -> None:
        if not self.models:
            raise NoModelsError(no_models_message(self.models_dir))

    def model_logits(self, key: str, crops: list[np.ndarray], interpolation: int | None = None,
                     fast: bool = False) -> np.ndarray:
        """Temperature-calibrated logits of one model for all crops, in batches; each crop resized to
        the model's input as in training, or with the cv2 `interpolation` given. `fast`: one view per
        crop whatever the policy (the fast mode of the CLI, the API and the app: a quarter of the
        voters' work, scores that move more with the framing; README, "Fast mode")."""
        loaded = self.models[key]
        with_views = self.uses_tta(key) and not fast
        views_fn = self.views_for(key)
        # With the views a call carries MAX_IMAGES_PER_CALL images (16 crops x 4 views, 8 x 8), not
        # 32 x 4: the activations of 128 images at once raised the peak RSS by 115 MB (docs/performance.md).
        step = max(1, MAX_IMAGES_PER_CALL // view_count(views_fn)) if with_views else MAX_BATCH
        out = []
        for start in range(0, len(crops), step):
            batch = prepare_batch(crops[start:start + step], loaded.input_size,
                                  loaded.manifest["mean"], loaded.manifest["std"], interpolation)
            if with_views:  # one call for every view: (V * N) logits, view by view
                views = views_fn(batch)
                every = self.runners[key].logits(torch.cat(views).contiguous(memory_format=torch.channels_last))
                out.append(every.reshape(len(views), len(batch)).mean(axis=0))
            else:
                out.append(self.runners[key].logits(batch))
        raw = np.concatenate(out) if out else np.zeros(0, np.float32)
        return raw.astype(np.float64) / loaded.temperature

    def score_crops(self, crops: list[np.ndarray], models=None, interpolation: int | None = None,
                    fast: bool = False) -> ScoreResult:
        """Score face crops (uint8 RGB squares) with the chosen (default: all loaded) models
        (`interpolation`, `fast`: see `model_logits`)."""
        self.require_models()
        keys = [k for k in (models or self.loaded_keys) if k in self.models]
        if not keys:
            raise NoModelsError("none of the chosen models is installed: " + ", ".join(models or []))
        logits = {k: self.model_logits(k, crops, interpolation, fast) for k in keys}
        return ScoreResult(model_logits=logits, model_probabilities={k: sigmoid(v) for k, v in logits.items()},
                           ensemble_probability=self.combine(logits), models_used=keys)

    def ensemble_weights(self, keys) -> tuple[dict[str, float], float]:
        return ensemble_weights(self.ensemble_manifest, keys)

    def combine(self, logits: dict[str, np.ndarray], keys=None) -> np.ndarray:
        return combine(self.ensemble_manifest, logits, keys)


def is_advisory(manifest: dict | None, key: str) -> bool:
    """Whether the ensemble manifest leaves `key` out as a voter (weight 0 or absent); without a
    manifest every member votes (equal weights)."""
    return bool(manifest) and float((manifest.get("weights") or {}).get(key, 0.0)) <= 0.0


def ensemble_weights(manifest: dict | None, keys) -> tuple[dict[str, float], float]:
    """Weights and bias over `keys`. Weights learnt on val are rescaled to their full sum when some
    members are switched off, so the ensemble keeps its logit scale; equal weights without a manifest
    (or when every chosen member has weight 0, e.g. only advisory members are on)."""
    keys = list(keys)
    if manifest:
        learnt = {k: max(float(manifest["weights"].get(k, 0.0)), 0.0) for k in keys}
        total_all = sum(max(float(v), 0.0) for v in manifest["weights"].values())
        total = sum(learnt.values())
        if total > 0:
            scale = total_all / total
            return {k: w * scale for k, w in learnt.items()}, float(manifest.get("bias", 0.0))
    return {k: 1.0 / len(keys) for k in keys}, 0.0


def combine(manifest: dict | None, logits: dict[str, np.ndarray], keys=None) -> np.ndarray:
    """Ensemble P(fake) from calibrated per-model logits: a pure function of the ensemble manifest."""
    keys = [k for k in (keys or list(logits)) if k in logits]
    if not keys:
        return np.zeros(0)
    weights, bias = ensemble_weights(manifest, keys)
    z = bias + sum(weights[k] * np.asarray(logits[k], dtype=np.float64) for k in keys)
    return sigmoid(z)


def verdict(probability: float | None, threshold: float) -> str:
    if probability is None or (isinstance(probability, float) and math.isnan(probability)):
        return "NO_FACE"
    return "FAKE" if probability >= threshold else "REAL"


__all__ = ["ScoringEngine", "ScoreResult", "Runner", "TorchRunner", "sigmoid", "combine", "ensemble_weights", "is_advisory",
           "ModelStatus", "NoModelsError", "verdict", "ENSEMBLE_KEY"]

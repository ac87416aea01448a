"""What a detector looked at: feature maps and class-activation heat maps for one face crop.

Plain functions (no Streamlit), used by the app and tested on their own:

    feature_maps(loaded, crop)   -> [LayerFeatures]  CNN stages named in the registry (`feature_layers`):
                                    the mean activation over channels and the most active channels
    grad_cam(loaded, crop)       -> (S, S) float32 in [0, 1]: Grad-CAM (pytorch_grad_cam) at the
                                    registry's `cam_layer`, for every registered model, transformers included
                                    (channels-last outputs such as Swin's (B, H, W, C) are reshaped)
    overlay(crop, heat, opacity) -> uint8 RGB: a heat map blended over the face

`loaded` is a model_store.LoadedModel (the app passes engine.models[key]); the crop is the pipeline's
uint8 RGB face crop, prepared exactly as for scoring (scoring.prepare_batch: the model's own input
size, mean and std). The heat map explains the *fake* logit: warm regions pushed the model towards
"fake". Every function takes an optional lock because hooks on a shared model must not see another
session's forward pass; on a shared scoring engine, use the `engine_*` functions, which hold the
model's runner lock (scoring.Runner.lock: the same with the torch and the ONNX runtime).

    engine_grad_cam(engine, key, crop)      -> grad_cam of engine.models[key] under its runner's lock
    engine_feature_maps(engine, key, crop)  -> feature_maps likewise
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import nn

from model_store import LoadedModel
from registry import get_spec
from scoring import prepare_batch

DEFAULT_TOP_CHANNELS = 4


@dataclass
class LayerFeatures:
    layer: str
    shape: tuple[int, int, int]                # (channels, height, width) of the layer's output
    mean_map: np.ndarray                       # (height, width) float32 in [0, 1]
    top_channels: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (index, map in [0, 1])


def spec_of(loaded: LoadedModel):
    return get_spec(loaded.manifest.get("architecture", {}).get("name", loaded.key))


def layers_to_show(loaded: LoadedModel) -> tuple[str, ...]:
    """The registry's feature-map layers for this model's variant (e.g. its trunk)."""
    return spec_of(loaded).layers_to_show(loaded.manifest.get("architecture", {}).get("args"))


def cam_layer_of(loaded: LoadedModel) -> str:
    """The registry's Grad-CAM layer for this model's variant (e.g. Swin's stem)."""
    return spec_of(loaded).cam_layer_for(loaded.manifest.get("architecture", {}).get("args"))


def has_feature_maps(loaded: LoadedModel) -> bool:
    return bool(layers_to_show(loaded))


def prepare_input(loaded: LoadedModel, crop: np.ndarray) -> torch.Tensor:
    """The crop as the model sees it when scoring: (1, 3, S, S), normalised, channels_last."""
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB crop (H, W, 3), got {crop.dtype} {crop.shape}")
    return prepare_batch([crop], loaded.input_size, loaded.manifest["mean"], loaded.manifest["std"])


def normalise_map(a: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] as float32; a constant map becomes zeros."""
    a = np.nan_to_num(np.asarray(a, dtype=np.float32))
    lo, hi = float(a.min()), float(a.max())
    if not hi > lo:
        return np.zeros_like(a, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def resize_map(a: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to size (int: square, or (height, width)), kept in [0, 1]."""
    h, w = (size, size) if isinstance(size, int) else size
    out = cv2.resize(np.asarray(a, dtype=np.float32), (int(w), int(h)), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _first_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"layer output is {type(output).__name__}, not a tensor")


def to_channels_first(t: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """A layer output as (B, C, H, W): (B, H, W, C) is permuted, (B, N, C) tokens folded into a grid.

    Token sequences with one extra (CLS) token drop it; the rest must form a square grid.
    """
    if t.ndim == 4:
        return t.permute(0, 3, 1, 2) if channels_last else t
    if t.ndim == 3:
        b, n, c = t.shape
        side = math.isqrt(n)
        if side * side != n:
            side = math.isqrt(n - 1)
            if side * side != n - 1:
                raise ValueError(f"cannot fold {n} tokens into a square grid")
            t = t[:, 1:]
        return t.reshape(b, side, side, c).permute(0, 3, 1, 2)
    raise ValueError(f"cannot show a layer output of shape {tuple(t.shape)} as a map")


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule `name` (dotted path). A numeric part that is not a child's name is taken as a
    position among the children, so "trunk.stage32.4" also finds the fifth block of a slice of an
    nn.Sequential (slices keep the original child names, e.g. "14".."18")."""
    module = model
    for part in name.split(".") if name else []:
        children = dict(module.named_children())
        if part in children:
            module = children[part]
        elif part.isdigit() and int(part) < len(children):
            module = list(children.values())[int(part)]
        else:
            raise AttributeError(f"{type(model).__name__} has no submodule {name!r} (failed at {part!r})")
    return module


def _maybe_lock(lock):
    return lock if lock is not None else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------
def feature_maps(loaded: LoadedModel, crop: np.ndarray, layers=None, top_k: int = DEFAULT_TOP_CHANNELS,
                 lock=None) -> list[LayerFeatures]:
    """Outputs of the model's named CNN stages (forward hooks) for one crop, as maps in [0, 1].

    Per layer: the mean over channels (where the stage responds at all) and the `top_k` channels with
    the highest mean activation, each scaled to [0, 1] on its own.
    """
    spec = spec_of(loaded)
    names = list(layers if layers is not None else layers_to_show(loaded))
    if not names:
        return []
    model: nn.Module = loaded.model
    modules = {name: resolve_module(model, name) for name in names}
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, inputs, output):
            captured[name] = _first_tensor(output).detach().float().cpu()
        return hook

    batch = prepare_input(loaded, crop)
    with _maybe_lock(lock):
        handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
        try:
            with torch.inference_mode():
                model(batch)
        finally:
            for h in handles:
                h.remove()
    out, cam_layer = [], cam_layer_of(loaded)
    for name in names:
        act = to_channels_first(captured[name], spec.cam_channels_last and name == cam_layer)[0]
        act = act.contiguous().numpy()          # (C, H, W)
        channel_strength = act.reshape(act.shape[0], -1).mean(axis=1)
        order = np.argsort(-channel_strength)[: max(0, top_k)]
        out.append(LayerFeatures(layer=name, shape=tuple(int(v) for v in act.shape),
                                 mean_map=normalise_map(act.mean(axis=0)),
                                 top_channels=[(int(c), normalise_map(act[c])) for c in order]))
    return out


class _FakeLogitTarget:
    """Grad-CAM target: the model's single (fake) logit, or its negation to explain "real"."""

    def __init__(self, sign: float = 1.0):
        self.sign = sign

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return self.sign * model_output.reshape(-1)[0]


def grad_cam(loaded: LoadedModel, crop: np.ndarray, layer: str | None = None, channels_last: bool | None = None,
             explain: str = "fake", lock=None) -> np.ndarray:
    """Grad-CAM heat map (input size S x S, float32 in [0, 1]) of the fake (or real) logit.

    The parameters are not differentiated (their requires_grad is switched off for the call and
    restored): the gradient reaches the target layer through an input that requires grad, so the
    shared model collects no .grad tensors.
    """
    from pytorch_grad_cam import GradCAM

    spec = spec_of(loaded)
    layer = layer or cam_layer_of(loaded)
    if not layer:
        raise ValueError(f"{loaded.key}: the registry names no Grad-CAM layer")
    channels_last = spec.cam_channels_last if channels_last is None else channels_last
    model: nn.Module = loaded.model
    target_layer = resolve_module(model, layer)
    batch = prepare_input(loaded, crop).clone()

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return to_channels_first(_first_tensor(t), channels_last)

    sign = 1.0 if explain == "fake" else -1.0
    with _maybe_lock(lock):
        flags = [(p, p.requires_grad) for p in model.parameters()]
        was_training = model.training
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            with torch.enable_grad():
                cam = GradCAM(model=model, target_layers=[target_layer], reshape_transform=reshape)
                try:
                    cam.compute_input_gradient = True
                    heat = cam(input_tensor=batch, targets=[_FakeLogitTarget(sign)])
                finally:
                    cam.activations_and_grads.release()
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            model.train(was_training)
    heat = np.asarray(heat[0], dtype=np.float32)
    return np.clip(np.nan_to_num(heat), 0.0, 1.0)


def engine_grad_cam(engine, key: str, crop: np.ndarray, explain: str = "fake") -> np.ndarray:
    """Grad-CAM of one of a (shared) ScoringEngine's models, under the lock of that model's runner."""
    return grad_cam(engine.models[key], crop, explain=explain, lock=engine.runners[key].lock)


def engine_feature_maps(engine, key: str, crop: np.ndarray,
                        top_k: int = DEFAULT_TOP_CHANNELS) -> list[LayerFeatures]:
    """Feature maps of one of a (shared) ScoringEngine's models, under the lock of that model's runner."""
    return feature_maps(engine.models[key], crop, top_k=top_k, lock=engine.runners[key].lock)


def overlay(crop: np.ndarray, heat: np.ndarray, opacity: float = 0.5,
            colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Blend a [0, 1] heat map (any size) over an RGB uint8 crop; opacity 0 = crop, 1 = heat map."""
    opacity = float(np.clip(opacity, 0.0, 1.0))
    h, w = crop.shape[:2]
    heat = resize_map(heat, (h, w)) if heat.shape[:2] != (h, w) else np.clip(heat, 0.0, 1.0)
    colour = cv2.applyColorMap(np.uint8(np.round(heat * 255)), colormap)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB).astype(np.float32)
    blended = (1.0 - opacity) * crop.astype(np.float32) + opacity * colour
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def colorize(heat: np.ndarray, size: int | None = None, colormap: int = cv2.COLORMAP_VIRIDIS) -> np.ndarray:
    """A [0, 1] map as an RGB uint8 picture (for channel thumbnails)."""
    if size:
        heat = cv2.resize(np.asarray(heat, dtype=np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
    colour = cv2.applyColorMap(np.uint8(np.round(np.clip(heat, 0, 1) * 255)), colormap)
    return cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)


__all__ = ["LayerFeatures", "feature_maps", "grad_cam", "engine_feature_maps", "engine_grad_cam", "overlay",
           "colorize", "prepare_input", "has_feature_maps", "resolve_module", "normalise_map", "resize_map", "to_channels_first"]

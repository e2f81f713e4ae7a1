"""MobileCLIP and MobileCLIP2 against OpenCLIP + timm: OpenCLIP's released configs at reduced width and depth (timm's
own `FastVit` / `VisionTransformer` with every flag of the released timm function) convert through `dualclip convert`
to the same image features, text features and logits, from the training-time and from the reparameterised form of
the FastViT towers; `FASTVIT_ARCHITECTURES`/`MOBILECLIP_VIT_ARCHITECTURES` are what timm's registered functions build;
the FastViT family's own reparameterisation fuses what timm's `reparameterize_model` fuses; the family saves, loads
through AutoModel and runs through every attention implementation alike."""

import json
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import torch
from family_checks import TOLERANCE, image_features_without_dualclip, relative_error
from openclip_timm_refs import openclip_model, register_timm_model, released_model_config
from safetensors.torch import save_file
from torch.nn import functional as F
from transformers import AutoModel

import dualclip  # noqa: F401  (registers the Auto classes)
from dualclip import DualClipConfig, DualClipModel, DualClipVisionModelWithProjection
from dualclip.conversion import ConversionError, convert_checkpoint
from dualclip.conversion.fastvit import FASTVIT_ARCHITECTURES, MOBILECLIP_VIT_ARCHITECTURES, fastvit_vision_tower
from dualclip.modeling_dualclip_fastvit import DualClipFastVitVisionConfig

EMBED_DIM = 24
TEXT = dict(width=32, heads=2, layers=1)
# OpenCLIP config -> timm name, one per set of options: MCi0/1/2 share MobileCLIP2-S0's (MobileCLIP-S1/S2,
# MobileCLIP2-S2), MCi3/4 MobileCLIP2-S3's (MobileCLIP2-S4), MobileCLIP2-B MobileCLIP-B's (both with a causal text
# tower; the others' are bidirectional).
RELEASED = {
    "MobileCLIP2-S0": "fastvit_mci0",
    "MobileCLIP2-S3": "fastvit_mci3",
    "MobileCLIP-B": "vit_base_mci_224",
    "MobileCLIP2-L-14": "vit_large_patch14_clip_224",
}
# Reduced FastViT stages (the widths double, as released; attention stages keep heads of 32).
REDUCED_FASTVIT = {
    "fastvit_mci0": dict(layers=(1, 2, 1, 2), embed_dims=(8, 16, 32, 64)),
    "fastvit_mci3": dict(layers=(1, 1, 2, 1, 2), embed_dims=(8, 16, 32, 64, 128)),
}
VIT_WIDTH, VIT_DEPTH, VIT_HEADS = 32, 2, 2


def captured_arguments(module, builder: str, timm_name: str) -> dict:
    """The keyword arguments timm's registered function `timm_name` passes to `module.builder` (intercepted),
    besides the variant name and `pretrained`."""
    import timm.models

    captured = {}
    original = getattr(module, builder)
    setattr(module, builder, lambda variant, pretrained=False, **kwargs: captured.update(kwargs))
    try:
        getattr(timm.models, timm_name)()
    finally:
        setattr(module, builder, original)
    return captured


def reduced_timm_model(timm_name: str) -> tuple[str, dict]:
    """Registers timm's model class for `timm_name` at reduced size under a test name; returns the name and the table
    entry for it."""
    import timm.models.fastvit as fastvit
    import timm.models.vision_transformer as vision_transformer
    import timm.models.vision_transformer_hybrid as hybrid
    from timm.layers import HybridEmbed

    test_name = f"dualclip_test_{timm_name}"
    if timm_name in FASTVIT_ARCHITECTURES:
        arguments = captured_arguments(fastvit, "_create_fastvit", timm_name)
        arguments.update(REDUCED_FASTVIT[timm_name])
        register_timm_model(test_name, fastvit.FastVit, **arguments)
        reduced = dict(REDUCED_FASTVIT[timm_name])
        arch = dict(FASTVIT_ARCHITECTURES[timm_name], depths=list(reduced["layers"]),
                    hidden_sizes=list(reduced["embed_dims"]))
        return test_name, arch
    arch = dict(MOBILECLIP_VIT_ARCHITECTURES[timm_name], hidden_size=VIT_WIDTH, num_hidden_layers=VIT_DEPTH,
                num_attention_heads=VIT_HEADS, intermediate_size=4 * VIT_WIDTH)
    if timm_name == "vit_base_mci_224":
        arguments = captured_arguments(hybrid, "_create_vision_transformer_hybrid", timm_name)
        stem = arguments.pop("backbone")
        convs = [layer.conv for layer in stem]
        # The released stem's layout, `hidden_size / 4, hidden_size / 4, hidden_size` wide.
        backbone = hybrid.ConvStem(
            channels=(VIT_WIDTH // 4, VIT_WIDTH // 4, VIT_WIDTH), stride=tuple(c.stride[0] for c in convs),
            kernel_size=tuple(c.kernel_size[0] for c in convs), padding=0, act_layer=torch.nn.GELU,
        )
        arguments["embed_layer"] = partial(HybridEmbed, backbone=backbone, **arguments.pop("embed_args"))
        arguments.setdefault("patch_size", 1)
    else:
        arguments = captured_arguments(vision_transformer, "_create_vision_transformer", timm_name)
    arguments.update(embed_dim=VIT_WIDTH, depth=VIT_DEPTH, num_heads=VIT_HEADS)
    register_timm_model(test_name, vision_transformer.VisionTransformer, **arguments)
    return test_name, arch


def reduced(openclip_name: str):
    """OpenCLIP's config `openclip_name` with a reduced timm tower and text tower; the test timm name; its table
    entry."""
    test_name, arch = reduced_timm_model(RELEASED[openclip_name])
    cfg = released_model_config(openclip_name)
    cfg["embed_dim"] = EMBED_DIM
    cfg["vision_cfg"]["timm_model_name"] = test_name
    cfg["text_cfg"].update(TEXT)
    return cfg, test_name, arch


@contextmanager
def table(test_name: str, arch: dict):
    """The conversion tables with the reduced entry added; yields the monkeypatch."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(FASTVIT_ARCHITECTURES if "fastvit" in test_name else MOBILECLIP_VIT_ARCHITECTURES, test_name, arch)
        yield patch


def reparameterized(model):
    """`model` with its timm FastViT trunk reparameterised in place by timm's own `reparameterize_model`."""
    from timm.utils.model import reparameterize_model

    reparameterize_model(model.visual.trunk, inplace=True)
    return model


def pixels(size, batch=2, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------------
# The tables against timm
# ----------------------------------------------------------------------------------------------------------------------


def fastvit_architecture_of(model) -> dict:
    """A timm `FastVit` read into `FASTVIT_ARCHITECTURES`' terms; asserts what the family takes for granted."""
    from timm.layers import LayerNorm2d
    from timm.models.fastvit import AttentionBlock, RepConditionalPosEnc, RepMixerBlock

    def gelu(module):
        return isinstance(module, torch.nn.GELU) and module.approximate == "none"

    arch = {key: [] for key in ("depths", "hidden_sizes", "mlp_ratios", "token_mixers", "downsamples",
                                "se_downsamples", "position_encodings")}
    norms = set()
    for stage in model.stages:
        block = stage.blocks[0]
        width = block.mlp.fc1.in_channels
        arch["depths"].append(len(stage.blocks))
        arch["hidden_sizes"].append(width)
        arch["mlp_ratios"].append(block.mlp.fc1.out_channels // width)
        arch["token_mixers"].append("attention" if isinstance(block, AttentionBlock) else "repmixer")
        downsample = not isinstance(stage.downsample, torch.nn.Identity)
        arch["downsamples"].append(downsample)
        arch["se_downsamples"].append(downsample and not isinstance(stage.downsample.proj[0].se, torch.nn.Identity))
        arch["position_encodings"].append(isinstance(stage.pos_emb, RepConditionalPosEnc))
        if isinstance(stage.pos_emb, RepConditionalPosEnc):
            assert stage.pos_emb.spatial_shape == (7, 7)
        if downsample:
            large = stage.downsample.proj[0]
            assert (large.kernel_size, large.small_kernel, large.stride, large.groups) == (7, 3, 2, large.in_chs)
            assert gelu(large.act) and gelu(stage.downsample.proj[1].act)
            if arch["se_downsamples"][-1]:
                assert large.se.fc1.out_channels == max(8, int(width * 0.25 + 4) // 8 * 8)
        for block in stage.blocks:
            assert block.mlp.conv.conv.kernel_size == (7, 7) and block.mlp.conv.conv.groups == width
            assert gelu(block.mlp.act)
            if isinstance(block, RepMixerBlock):
                assert block.token_mixer.kernel_size == 3
                assert block.token_mixer.layer_scale.gamma.shape == (width, 1, 1)
                assert block.layer_scale.gamma.shape == (width, 1, 1)
            else:
                assert block.token_mixer.head_dim == 32 and block.token_mixer.qkv.bias is None
                assert block.layer_scale_1.gamma.shape == block.layer_scale_2.gamma.shape == (width, 1, 1)
                norms.add((type(block.norm), block.norm.eps))
    assert len(norms) <= 1
    norm_class, eps = next(iter(norms))
    assert eps == 1e-5 and norm_class in (torch.nn.BatchNorm2d, LayerNorm2d)
    arch["attention_norm"] = "layer_norm" if norm_class is LayerNorm2d else "batch_norm"
    arch["stem_scale_branch"] = model.stem[0].conv_scale is not None
    assert [(b.kernel_size, b.stride, b.groups) for b in model.stem] == [(3, 2, 1), (3, 2, arch["hidden_sizes"][0]),
                                                                        (1, 1, 1)]
    assert all(gelu(b.act) for b in model.stem)
    final = model.final_conv
    last = arch["hidden_sizes"][-1]
    assert (final.in_chs, final.out_chs, final.kernel_size, final.groups) == (last, 2 * last, 3, last)
    assert final.se.fc1.out_channels == int(2 * last / 16 + 0.5) and gelu(final.act)
    assert model.head.global_pool.pool_type == "avg" and model.head.fc.bias is not None
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}
    return arch


def vit_architecture_of(model) -> dict:
    """A timm `VisionTransformer` read into `MOBILECLIP_VIT_ARCHITECTURES`' terms; asserts what the CLIP ViT family
    takes for granted: class-token pooling of the final LayerNorm (no fc_norm), q/k/v biases, no QK norm, no
    LayerScale, exact GELU, no register tokens."""
    from timm.layers import HybridEmbed

    block = model.blocks[0]
    assert model.global_pool == "token" and isinstance(model.fc_norm, torch.nn.Identity)
    assert model.reg_token is None and model.cls_token is not None and model.head.bias is not None
    assert block.attn.qkv.bias is not None and isinstance(block.attn.q_norm, torch.nn.Identity)
    assert isinstance(block.ls1, torch.nn.Identity) and isinstance(block.ls2, torch.nn.Identity)
    assert isinstance(block.mlp.act, torch.nn.GELU) and block.mlp.act.approximate == "none"
    hybrid = isinstance(model.patch_embed, HybridEmbed)
    arch = {
        "image_size": model.patch_embed.img_size[0],
        "hidden_size": model.embed_dim,
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": block.attn.num_heads,
        "intermediate_size": block.mlp.fc1.out_features,
        "hidden_act": "gelu",
        "layer_norm_eps": model.norm.eps,
        "projection_bias": True,
        "pre_norm": not isinstance(model.norm_pre, torch.nn.Identity),
        "stem": "mobileclip" if hybrid else "patch",
        "class_position_embedding": not model.no_embed_class,
    }
    if hybrid:
        stem = model.patch_embed.backbone
        width = model.embed_dim
        layout = [(l.conv.in_channels, l.conv.out_channels, l.conv.kernel_size[0], l.conv.stride[0], l.conv.padding[0],
                   l.conv.bias is not None) for l in stem]
        assert layout == [(3, width // 4, 4, 4, 0, False), (width // 4, width // 4, 2, 2, 0, False),
                          (width // 4, width, 2, 2, 0, True)]
        assert all(l.bn.eps == 1e-5 and isinstance(l.bn.act, torch.nn.GELU) for l in list(stem)[:2])
        assert isinstance(model.patch_embed.proj, torch.nn.Identity)
        arch["patch_size"] = 4 * 2 * 2
    else:
        arch["patch_size"] = model.patch_embed.patch_size[0]
        assert model.patch_embed.proj.bias is None  # timm drops it before a pre-norm; CLIP's patch has none
    return arch


@pytest.mark.parametrize("timm_name", sorted(FASTVIT_ARCHITECTURES) + sorted(MOBILECLIP_VIT_ARCHITECTURES))
def test_architecture_tables_are_what_timm_builds(timm_name):
    import timm

    vit = timm_name in MOBILECLIP_VIT_ARCHITECTURES
    with torch.device("meta"):
        model = timm.create_model(timm_name, num_classes=EMBED_DIM, global_pool="token" if vit else "avg")
    if vit:
        assert vit_architecture_of(model) == MOBILECLIP_VIT_ARCHITECTURES[timm_name]
    else:
        assert fastvit_architecture_of(model) == FASTVIT_ARCHITECTURES[timm_name]


def test_the_tables_cover_every_openclip_mobileclip_config():
    import open_clip

    folder = Path(open_clip.__file__).parent / "model_configs"
    names = {json.loads(path.read_text())["vision_cfg"]["timm_model_name"] for path in folder.glob("MobileCLIP*.json")}
    assert names == set(FASTVIT_ARCHITECTURES) | set(MOBILECLIP_VIT_ARCHITECTURES)


# ----------------------------------------------------------------------------------------------------------------------
# End to end through `dualclip convert`
# ----------------------------------------------------------------------------------------------------------------------

CASES = [(name, False) for name in RELEASED] + [("MobileCLIP2-S0", True), ("MobileCLIP2-S3", True)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}{'-reparameterized' if r else ''}" for n, r in CASES])
def converted(request, tmp_path_factory):
    """(OpenCLIP reference, converted DualClipModel, its config, conversion result), through an OpenCLIP hub folder
    holding the reference's state dict (the FastViT trunk reparameterised by timm for the `-reparameterized` cases)."""
    openclip_name, fused = request.param
    cfg, test_name, arch = reduced(openclip_name)
    reference = openclip_model(f"dualclip-test-{openclip_name}", cfg, logit_scale=4.9)
    if fused:
        reparameterized(reference)
    folder = tmp_path_factory.mktemp("hub")
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": released_preprocessing(openclip_name)})
    )
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, folder / "open_clip_model.safetensors")
    with table(test_name, arch):
        result = convert_checkpoint(folder, folder.parent / f"{folder.name}-out", verify=True)
    model = AutoModel.from_pretrained(folder.parent / f"{folder.name}-out").eval()
    return openclip_name, fused, reference, model, cfg, result


def released_preprocessing(openclip_name: str) -> dict:
    """The `preprocess_cfg` of the model's first pretrained tag in open_clip, as its hub folder holds it."""
    import open_clip

    tag = next(tag for name, tag in open_clip.list_pretrained() if name == openclip_name)
    pretrained = open_clip.get_pretrained_cfg(openclip_name, tag)
    return {key: pretrained[key] for key in ("mean", "std", "interpolation", "resize_mode")}


def text_batch(context: int):
    ids = torch.zeros(2, context, dtype=torch.long)
    ids[0, :5] = torch.tensor([49406, 320, 1125, 539, 49407])
    ids[1] = torch.randint(1, 49406, (context,), generator=torch.Generator().manual_seed(1))
    ids[1, 0], ids[1, -1] = 49406, 49407
    return ids, (ids != 0).long()


@torch.no_grad()
def test_dualclip_convert_gives_open_clips_features_and_logits(converted):
    name, fused, reference, model, cfg, result = converted
    assert result.verification.passed, result.verification.summary()
    assert "MobileCLIP" in result.architecture
    vision = model.config.vision_config
    if RELEASED[name].startswith("fastvit"):
        assert isinstance(vision, DualClipFastVitVisionConfig) and vision.reparameterized is fused
    else:
        assert vision.model_type == "dualclip_vision_model"
    assert model.config.text_config.causal_mask is not cfg["text_cfg"]["no_causal_mask"]
    # MobileCLIP's preprocessing (mean 0 and std 1, or MobileCLIP2's OpenAI values; bilinear but for L-14; shortest
    # edge, then the centre crop).
    preprocess = released_preprocessing(name)
    processor = json.loads((result.output / "preprocessor_config.json").read_text())
    assert (processor["image_mean"], processor["image_std"]) == (list(preprocess["mean"]), list(preprocess["std"]))
    assert processor["resample"] == {"bilinear": 2, "bicubic": 3}[preprocess["interpolation"]]  # PIL's numbers
    assert processor["size"] == {"shortest_edge": vision.image_size} and processor["do_center_crop"]

    ids, mask = text_batch(cfg["text_cfg"]["context_length"])
    images = pixels(vision.image_size)
    want_text, want_image = reference.encode_text(ids), reference.encode_image(images)
    want_logits = reference.logit_scale.exp() * F.normalize(want_image, dim=-1) @ F.normalize(want_text, dim=-1).t()
    out = model(input_ids=ids, attention_mask=mask, pixel_values=images)
    errors = {
        "image features": relative_error(model.encode_image(images), want_image),
        "image features (forward)": relative_error(model.get_image_features(images).pooler_output, want_image),
        "text features": relative_error(model.encode_text(ids, attention_mask=mask), want_text),
        "logits": relative_error(out.logits_per_image, want_logits),
    }
    print(f"\n{name}{' (reparameterised)' if fused else ''}: relative errors {errors}")
    assert max(errors.values()) < TOLERANCE, errors


@torch.no_grad()
def test_eager_and_sdpa_give_the_same_numbers(converted):
    name, _, _, model, _, _ = converted
    if not RELEASED[name].startswith("fastvit"):
        pytest.skip("the CLIP ViT family's attention implementations are tested with that family")
    vision = model.vision_model
    images = pixels(model.config.vision_config.image_size, seed=1)
    sdpa = vision(images, output_hidden_states=True)
    model.set_attn_implementation("eager")
    try:
        eager = vision(images, output_hidden_states=True, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    config = model.config.vision_config
    assert relative_error(eager.pooler_output, sdpa.pooler_output) < TOLERANCE
    assert len(eager.hidden_states) == len(config.depths) + 1  # the stem's output, then each stage's
    assert len(eager.attentions) == sum(d for d, m in zip(config.depths, config.token_mixers) if m == "attention")
    for mine, theirs in zip(eager.hidden_states, sdpa.hidden_states):
        assert relative_error(mine, theirs) < TOLERANCE


# ----------------------------------------------------------------------------------------------------------------------
# Reparameterisation in dualclip against timm's
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("openclip_name", ["MobileCLIP2-S0", "MobileCLIP2-S3"])
@torch.no_grad()
def test_reparameterize_fuses_what_timms_reparameterize_model_fuses(openclip_name):
    """`DualClipFastVit.reparameterize()` on the converted training-time tower gives the tensors timm's
    `reparameterize_model` gives (converted the same way), and the same features."""
    cfg, test_name, arch = reduced(openclip_name)
    reference = openclip_model(f"dualclip-test-reparam-{openclip_name}", cfg, seed=3)
    tensors = {k: v for k, v in reference.state_dict().items() if k.startswith("visual.")}
    with table(test_name, arch):
        config, state = fastvit_vision_tower(cfg["vision_cfg"], EMBED_DIM, tensors)
        reparameterized(reference)
        fused_config, timm_fused = fastvit_vision_tower(
            cfg["vision_cfg"], EMBED_DIM, {k: v for k, v in reference.state_dict().items() if k.startswith("visual.")}
        )
    model = DualClipVisionModelWithProjection(config).eval()
    model.load_state_dict(state, strict=True)
    images = pixels(config.image_size, seed=2)
    before = model.encode_image(images)
    model.vision_model.reparameterize()
    assert model.config.reparameterized and fused_config.reparameterized
    ours = model.state_dict()
    assert set(ours) == set(timm_fused)
    for key, value in timm_fused.items():
        assert relative_error(ours[key].float(), value.float()) < TOLERANCE if value.abs().max() else True, key
    after = model.encode_image(images)
    want = reference.encode_image(images)
    assert relative_error(after, want) < TOLERANCE and relative_error(before, want) < TOLERANCE


# ----------------------------------------------------------------------------------------------------------------------
# Full size
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@torch.no_grad()
def test_full_size_mobileclip_s1_image_tower_equals_openclip():
    """MobileCLIP-S1's image tower at full size (random weights, every BatchNorm statistic perturbed; text tower
    reduced), in both forms."""
    cfg = released_model_config("MobileCLIP-S1")
    cfg["text_cfg"].update(TEXT)
    reference = openclip_model("dualclip-test-full-MobileCLIP-S1", cfg)
    # LayerScales of N(0, 0.1) rather than the randomiser's N(0, 1) for `(C, 1, 1)` tensors: through 40 blocks the
    # latter give features of 1e12, where one path drowns the others.
    for name, parameter in reference.named_parameters():
        if name.endswith("gamma"):
            parameter.mul_(0.1)
    images = pixels(cfg["vision_cfg"]["image_size"], batch=1)
    for fused in (False, True):
        if fused:
            reparameterized(reference)
        tensors = {k: v for k, v in reference.state_dict().items() if k.startswith("visual.")}
        config, state = fastvit_vision_tower(cfg["vision_cfg"], cfg["embed_dim"], tensors)
        model = DualClipVisionModelWithProjection(config).eval()
        model.load_state_dict(state, strict=True)
        error = relative_error(model.encode_image(images), reference.encode_image(images))
        print(f"\nMobileCLIP-S1 (full size{', reparameterised' if fused else ''}): relative error {error:.2e}")
        assert error < TOLERANCE


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


def test_conversion_errors_name_what_does_not_fit():
    cfg, test_name, arch = reduced("MobileCLIP2-S0")
    reference = openclip_model("dualclip-test-errors", cfg)
    tensors = {k: v for k, v in reference.state_dict().items() if k.startswith("visual.")}
    vision = cfg["vision_cfg"]

    def convert(vision_cfg=vision, embed_dim=EMBED_DIM, state=tensors):
        return fastvit_vision_tower(vision_cfg, embed_dim, state)

    with table(test_name, arch) as patch:
        with pytest.raises(ConversionError, match="timm_model_name='fastvit_t8'"):
            convert(dict(vision, timm_model_name="fastvit_t8"))
        with pytest.raises(ConversionError, match="timm_pool='token'"):
            convert(dict(vision, timm_pool="token"))
        with pytest.raises(ConversionError, match="timm_proj='linear'"):
            convert({k: v for k, v in vision.items() if k != "timm_proj"})  # OpenCLIP's default
        with pytest.raises(ConversionError, match="embed_dim is 512 in the config but 24"):
            convert(embed_dim=512)
        patch.setitem(FASTVIT_ARCHITECTURES, test_name, dict(arch, depths=[1, 2, 2, 2]))
        with pytest.raises(ConversionError, match=r"depths .* \[1, 2, 2, 2\] in the config but \[1, 2, 1, 2\]"):
            convert()
        # MCi3's options for MCi0 tensors: the BatchNorm before the attention gives it away.
        patch.setitem(FASTVIT_ARCHITECTURES, test_name, dict(arch, attention_norm="layer_norm"))
        with pytest.raises(ConversionError, match="attention_norm .* 'layer_norm' in the config but 'batch_norm'"):
            convert()
        patch.setitem(FASTVIT_ARCHITECTURES, test_name, arch)
        extra = {"visual.trunk.stages.3.blocks.0.token_mixer.q_norm.weight": torch.ones(64)}
        with pytest.raises(ConversionError, match=r"cannot place .*token_mixer\.q_norm\.weight"):
            convert(state={**tensors, **extra})
        # Half a reparameterisation: one RepMixer fused, the rest not.
        prefix = "visual.trunk.stages.0.blocks.0.token_mixer."
        mixed = {k: v for k, v in tensors.items() if not k.startswith(prefix)}
        mixed[prefix + "reparam_conv.weight"], mixed[prefix + "reparam_conv.bias"] = torch.ones(8, 1, 3, 3), torch.ones(8)
        with pytest.raises(ConversionError, match=r"cannot place .*stages\.0\.blocks\.0\.token_mixer\.reparam_conv"):
            convert(state=mixed)
        missing = {k: v for k, v in tensors.items() if not k.endswith("final_conv.se.fc2.bias")}
        with pytest.raises(ConversionError, match=r"lacks tensors .*final_conv\.se\.fc2\.bias"):
            convert(state=missing)
        config, renamed = convert()
        assert isinstance(config, DualClipFastVitVisionConfig) and not config.reparameterized
        assert set(renamed) == set(DualClipVisionModelWithProjection(config).state_dict())


def test_vit_conversion_errors():
    cfg, test_name, arch = reduced("MobileCLIP-B")
    reference = openclip_model("dualclip-test-vit-errors", cfg)
    tensors = {k: v for k, v in reference.state_dict().items() if k.startswith("visual.")}
    vision = cfg["vision_cfg"]
    with table(test_name, arch) as patch:
        with pytest.raises(ConversionError, match="timm_pool='avg'"):
            fastvit_vision_tower(dict(vision, timm_pool="avg"), EMBED_DIM, tensors)
        with pytest.raises(ConversionError, match="image_size is 256 .* 224"):
            fastvit_vision_tower(dict(vision, image_size=256), EMBED_DIM, tensors)
        patch.setitem(MOBILECLIP_VIT_ARCHITECTURES, test_name, dict(arch, stem="patch", patch_size=16))
        with pytest.raises(ConversionError, match="stem .* 'patch' in the config but 'mobileclip'"):
            fastvit_vision_tower(vision, EMBED_DIM, tensors)


def test_config_checks():
    with pytest.raises(Exception, match="one entry per stage"):
        DualClipFastVitVisionConfig(depths=[1, 1, 1])
    with pytest.raises(Exception, match=r"hidden_sizes\[3\]"):
        DualClipFastVitVisionConfig(hidden_sizes=[8, 16, 32, 48])
    with pytest.raises(Exception, match=r"downsamples\[1\]"):
        DualClipFastVitVisionConfig(downsamples=[False, False, True, True])
    with pytest.raises(Exception, match="token_mixers"):
        DualClipFastVitVisionConfig(token_mixers=["repmixer", "repmixer", "mixer", "attention"])


# ----------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------------

SMALL = dict(depths=[1, 1, 2], hidden_sizes=[8, 16, 32], mlp_ratios=[3, 3, 3],
             token_mixers=["repmixer", "repmixer", "attention"], downsamples=[False, True, True],
             se_downsamples=[False, False, True], position_encodings=[False, False, True], image_size=64,
             projection_dim=24, model_type="dualclip_fastvit_vision_model")


def dual_model(vision: dict) -> DualClipModel:
    config = DualClipConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                             num_attention_heads=2, vocab_size=99, max_position_embeddings=16,
                                             bos_token_id=97, eos_token_id=98, pad_token_id=0),
                            vision_config=vision, projection_dim=24)
    torch.manual_seed(0)
    return DualClipModel(config).eval()


@torch.no_grad()
def test_save_and_auto_model_round_trip_in_both_forms(tmp_path):
    model = dual_model(SMALL)
    assert isinstance(model.config.vision_config, DualClipFastVitVisionConfig)
    input_ids = torch.randint(1, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    input_ids[:, -1] = 98
    images = pixels(64)
    for form in ("training", "reparameterized"):
        if form == "reparameterized":
            want = model(input_ids=input_ids, pixel_values=images).logits_per_text
            model.vision_model.reparameterize()
            assert relative_error(model(input_ids=input_ids, pixel_values=images).logits_per_text, want) < TOLERANCE
        model.save_pretrained(tmp_path / form)
        saved = json.loads((tmp_path / form / "config.json").read_text())["vision_config"]
        assert saved["model_type"] == "dualclip_fastvit_vision_model"
        assert saved["reparameterized"] is (form == "reparameterized")
        assert (tmp_path / form / "modeling_dualclip_fastvit.py").exists()  # for trust_remote_code
        loaded = AutoModel.from_pretrained(tmp_path / form).eval()
        assert type(loaded.vision_model).__name__ == "DualClipFastVit"
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        assert torch.equal(loaded(input_ids=input_ids, pixel_values=images).logits_per_text,
                           model(input_ids=input_ids, pixel_values=images).logits_per_text)
    # Convolutional: any size with interpolate_pos_encoding=True.
    assert model.encode_image(pixels(96, batch=1), interpolate_pos_encoding=True).shape == (1, 24)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model.encode_image(pixels(96, batch=1))


@torch.no_grad()
def test_folder_loads_with_trust_remote_code_without_dualclip(tmp_path):
    model = dual_model(SMALL)
    features = image_features_without_dualclip(model, tmp_path, pixels(64))
    assert torch.equal(features, model.get_image_features(pixels(64)).pooler_output)


def test_mobileclip_vit_folders_are_not_exported_to_stock_clip(tmp_path):
    """Stock CLIP has neither MobileCLIP's convolutional stem nor a class token without position embedding."""
    from dualclip.conversion import export_to_hf_clip

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16, projection_dim=24, stem="mobileclip", class_position_embedding=False)
    dual_model(vision).save_pretrained(tmp_path / "model")
    with pytest.raises(ConversionError, match=r"stem='mobileclip'.*class_position_embedding=False"):
        export_to_hf_clip(tmp_path / "model", tmp_path / "stock")
    assert not (tmp_path / "stock").exists()

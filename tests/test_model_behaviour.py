"""dualclip models behave as well-formed transformers models: fast path, save/load, Auto and remote code,
dtype, batching, attention implementations, gradient checkpointing, embeddings resizing, compile, bad input."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from tiny_models import EOS, LOAD_WITHOUT_DUALCLIP, MODEL, TEXT, VISION, max_diff, pixel_batch, text_batch
from transformers import AutoConfig, AutoModel

import dualclip
from dualclip import (
    DualClipConfig,
    DualClipModel,
    DualClipTextConfig,
    DualClipTextModel,
    DualClipTextModelWithProjection,
    DualClipVisionConfig,
    DualClipVisionModel,
    DualClipVisionModelWithProjection,
)

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DualClipModel(DualClipConfig(**MODEL)).eval()


# --- pooled fast path ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["eos", "argmax", "last"])
@pytest.mark.parametrize("use_mask", [True, False])
def test_pooled_fast_path_gives_the_same_pooled_outputs(pooling, attn_implementation, use_mask):
    torch.manual_seed(3)
    text = DualClipTextModelWithProjection(DualClipTextConfig(**TEXT, pooling=pooling)).eval()
    text.set_attn_implementation(attn_implementation)
    ids, mask = text_batch(lengths=(5, 9, 3, 7))  # padded to 16, last EOS at position 8
    mask = mask if use_mask else None
    with torch.no_grad():
        full = text(ids, mask)
        fast = text(ids, mask, pooled_only=True)
    assert fast.last_hidden_state.shape == (4, 1, TEXT["hidden_size"])
    assert max_diff(full.text_embeds, fast.text_embeds) < TOLERANCE
    positions = text.text_model.pooled_positions(ids)
    assert max_diff(full.last_hidden_state[torch.arange(4), positions], fast.last_hidden_state[:, 0]) < TOLERANCE


def test_dual_model_fast_path_is_opt_in_with_identical_features(model):
    ids, mask = text_batch(lengths=(5, 9, 3))
    pixels = pixel_batch()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        fast = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, pooled_only=True)
        features = model.get_text_features(ids, mask)
        encoded_text = model.encode_text(ids, attention_mask=mask)
        encoded_image = model.encode_image(pixels, normalize=True)
    assert fast.text_model_output.last_hidden_state.shape[1] == 1
    assert full.text_model_output.last_hidden_state.shape[1] == 16
    assert fast.vision_model_output.last_hidden_state.shape[1] == 1
    assert max_diff(fast.logits_per_image, full.logits_per_image) < TOLERANCE
    assert max_diff(fast.logits_per_text, full.logits_per_text) < TOLERANCE
    assert max_diff(features.pooler_output, full.text_model_output.pooler_output) < TOLERANCE
    assert max_diff(encoded_text, full.text_model_output.pooler_output) < TOLERANCE
    assert max_diff(encoded_image, full.image_embeds) < TOLERANCE


@pytest.mark.parametrize("projected", [False, True])
def test_vision_pooled_only_computes_the_class_token_alone(projected):
    torch.manual_seed(8)
    tower_class = DualClipVisionModelWithProjection if projected else DualClipVisionModel
    tower = tower_class(DualClipVisionConfig(**VISION)).eval()
    pixels = pixel_batch()
    with torch.no_grad():
        full, fast = tower(pixels), tower(pixels, pooled_only=True)
    assert fast.last_hidden_state.shape[1] == 1 < full.last_hidden_state.shape[1]
    pooled = "image_embeds" if projected else "pooler_output"
    assert max_diff(full[pooled], fast[pooled]) < TOLERANCE
    assert max_diff(full.last_hidden_state[:, :1], fast.last_hidden_state) < TOLERANCE


def test_fast_path_is_off_when_token_level_states_are_requested():
    torch.manual_seed(4)
    text = DualClipTextModel(DualClipTextConfig(**TEXT)).eval()
    ids, _ = text_batch(lengths=(4, 6))
    out = text(ids, pooled_only=True, output_hidden_states=True)
    assert all(state.shape[1] == 16 for state in out.hidden_states)

    # Without a causal mask every position matters to the pooled one, but the last layer still needs only it.
    bidirectional = DualClipTextModel(DualClipTextConfig(**TEXT, causal_mask=False)).eval()
    ids, mask = text_batch(lengths=(4, 6))
    with torch.no_grad():
        full, fast = bidirectional(ids, mask), bidirectional(ids, mask, pooled_only=True)
    assert max_diff(full.pooler_output, fast.pooler_output) < TOLERANCE


# --- loading, saving, Auto classes, remote code ------------------------------------------------------------------------


def test_save_and_auto_model_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "dualclip"
    assert saved["auto_map"]["AutoModel"] == "modeling_dualclip.DualClipModel"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DualClipConfig)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is DualClipModel
    ids, mask = text_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixel_batch(batch=4))
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits_per_text, loaded(**inputs).logits_per_text)


@pytest.mark.parametrize(
    "model_class, config",
    [
        (DualClipTextModel, DualClipTextConfig(**TEXT)),
        (DualClipTextModelWithProjection, DualClipTextConfig(**TEXT)),
        (DualClipVisionModel, DualClipVisionConfig(**VISION)),
        (DualClipVisionModelWithProjection, DualClipVisionConfig(**VISION)),
    ],
)
def test_tower_classes_round_trip_through_auto_model(model_class, config, tmp_path):
    torch.manual_seed(5)
    tower = model_class(config).eval()
    tower.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=False)
    # AutoModel builds the base class for the config; the projection variants load through their own class.
    assert isinstance(loaded, (DualClipTextModel, DualClipVisionModel))
    reloaded = model_class.from_pretrained(tmp_path).eval()
    for name, tensor in tower.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name


REMOTE_CODE_SCRIPT = LOAD_WITHOUT_DUALCLIP + textwrap.dedent(
    """
    inputs = torch.load(sys.argv[2])
    with torch.no_grad():
        logits = model(**inputs).logits_per_text
    print(json.dumps({"module": type(model).__module__, "logits": logits.tolist()}))
    """
)


def test_saved_folder_loads_with_trust_remote_code_without_dualclip(model, tmp_path):
    folder, inputs_file = tmp_path / "model", tmp_path / "inputs.pt"
    model.save_pretrained(folder)
    assert (folder / "modeling_dualclip.py").exists() and (folder / "configuration_dualclip.py").exists()
    ids, mask = text_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixel_batch(batch=4))
    torch.save(inputs, inputs_file)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(folder), str(inputs_file)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["module"].startswith("dualclip")
    with torch.no_grad():
        expected = model(**inputs).logits_per_text
    assert max_diff(torch.tensor(report["logits"]), expected) < TOLERANCE


# --- transformers-model behaviour ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_moves(model, dtype):
    ids, mask = text_batch()
    pixels = pixel_batch(batch=4)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        low = DualClipModel(model.config).eval()
        low.load_state_dict(model.state_dict())
        low = low.to(dtype)
        out = low(input_ids=ids, attention_mask=mask, pixel_values=pixels.to(dtype))
    assert out.logits_per_text.dtype == dtype
    assert torch.isfinite(out.logits_per_text).all()
    for field in ("text_embeds", "image_embeds"):  # unit vectors: low precision only rounds them
        cosine = torch.nn.functional.cosine_similarity(out[field].float(), reference[field], dim=-1)
        assert cosine.min() > 0.99, field


def test_float16_normalisation_does_not_overflow():
    features = torch.full((2, 768), 20.0, dtype=torch.float16)  # sum of squares 307200 > float16 max 65504
    assert features.pow(2).sum(dim=-1).isinf().all()  # the naive computation overflows
    normalised = dualclip.modeling_dualclip.l2_normalize(features)
    assert torch.isfinite(normalised).all()
    assert max_diff(normalised.float().norm(dim=-1), torch.ones(2)) < 1e-2


def test_batching_equivalence(model):
    ids, mask = text_batch()
    pixels = pixel_batch(batch=4)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        for row in range(ids.shape[0]):
            single = model(input_ids=ids[row : row + 1], attention_mask=mask[row : row + 1], pixel_values=pixels[row : row + 1])
            assert max_diff(single.text_embeds[0], batched.text_embeds[row]) < TOLERANCE
            assert max_diff(single.image_embeds[0], batched.image_embeds[row]) < TOLERANCE


def test_eager_and_sdpa_agree(model, tmp_path):
    model.save_pretrained(tmp_path)
    eager = DualClipModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = DualClipModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.config.text_config._attn_implementation == "eager"
    ids, mask = text_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixel_batch(batch=4), output_hidden_states=True)
    with torch.no_grad():
        a, b = eager(**inputs), sdpa(**inputs)
    assert max_diff(a.logits_per_text, b.logits_per_text) < TOLERANCE
    for x, y in zip(a.text_model_output.hidden_states, b.text_model_output.hidden_states):
        # The residual stream is not unit-scale: allow the fp32 summation-order difference relative to its size.
        assert max_diff(x, y) < TOLERANCE * max(1.0, x.abs().max().item())


def test_output_attentions_with_eager_attention(model):
    model.set_attn_implementation("eager")
    try:
        out = model.get_text_features(text_batch()[0], output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    assert len(out.attentions) == TEXT["num_hidden_layers"]
    assert out.attentions[0].shape == (4, TEXT["num_attention_heads"], 16, 16)


def _loss_and_grads(model, inputs):
    model.zero_grad()
    loss = model(**inputs, return_loss=True).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(model):
    trained = DualClipModel(model.config)
    trained.load_state_dict(model.state_dict())
    trained.train()
    ids, mask = text_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixel_batch(batch=4))
    loss, grads = _loss_and_grads(trained, inputs)
    trained.gradient_checkpointing_enable()
    assert trained.is_gradient_checkpointing
    checkpointed_loss, checkpointed_grads = _loss_and_grads(trained, inputs)
    assert torch.allclose(loss, checkpointed_loss)
    assert grads.keys() == checkpointed_grads.keys()
    for name in grads:
        assert max_diff(grads[name], checkpointed_grads[name]) < 1e-6, name


def test_resize_token_embeddings_keeps_eos_pooling():
    torch.manual_seed(6)
    text = DualClipTextModel(DualClipTextConfig(**TEXT)).eval()
    ids, mask = text_batch(lengths=(5, 16, 9, 3))
    with torch.no_grad():
        before = text(ids, mask).pooler_output
    text.resize_token_embeddings(TEXT["vocab_size"] + 3)
    assert text.config.vocab_size == TEXT["vocab_size"] + 3
    assert text.get_input_embeddings().weight.shape[0] == TEXT["vocab_size"] + 3
    with torch.no_grad():
        assert max_diff(text(ids, mask).pooler_output, before) < TOLERANCE
        with_added = ids.clone()
        with_added[:, 1] = TEXT["vocab_size"] + 2  # an added token id above EOS (textual inversion)
        out = text(with_added, mask)
    eos_positions = (with_added == EOS).int().argmax(dim=-1)
    assert torch.equal(out.pooler_output, out.last_hidden_state[torch.arange(4), eos_positions])


def test_row_without_eos_pools_position_zero_as_transformers_does():
    torch.manual_seed(7)
    text = DualClipTextModel(DualClipTextConfig(**TEXT)).eval()
    ids = torch.randint(1, 900, (2, 6))
    out = text(ids)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])


def test_interpolate_pos_encoding_runs_other_sizes(model):
    pixels = pixel_batch(batch=2, size=48)
    with torch.no_grad():
        out = model.get_image_features(pixels, interpolate_pos_encoding=True)
        same_size = model.get_image_features(pixel_batch(batch=2), interpolate_pos_encoding=True)
        plain = model.get_image_features(pixel_batch(batch=2))
    assert out.last_hidden_state.shape[1] == (48 // 8) ** 2 + 1
    assert torch.equal(same_size.pooler_output, plain.pooler_output)


@pytest.mark.parametrize("pooled_only", [False, True])
@pytest.mark.parametrize("tower", ["text", "vision"])
def test_towers_compile_without_graph_breaks(model, tower, pooled_only):
    torch._dynamo.reset()
    if tower == "text":
        ids, mask = text_batch()
        module, args, kwargs = model.text_model, (ids,), dict(attention_mask=mask, pooled_only=pooled_only)
    else:
        module, args, kwargs = model.vision_model, (pixel_batch(),), dict(pooled_only=pooled_only)
    compiled = torch.compile(module, fullgraph=True)  # inductor: real code generation, not only graph capture
    with torch.no_grad():
        assert max_diff(compiled(*args, **kwargs).pooler_output, module(*args, **kwargs).pooler_output) < TOLERANCE


# --- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config_class, kwargs, field",
    [
        (DualClipTextConfig, dict(pooling="mean"), "pooling"),
        (DualClipTextConfig, dict(hidden_size=30), "hidden_size"),
        (DualClipTextConfig, dict(layer_scale_init_value=-1.0), "layer_scale_init_value"),
        (DualClipTextConfig, dict(causal_mask="yes"), "causal_mask"),
        (DualClipVisionConfig, dict(image_size=30, patch_size=8), "image_size"),
        (dualclip.DualClipResNetConfig, dict(resnet_width=32), "hidden_size"),
        (dualclip.DualClipResNetConfig, dict(resnet_layers=[1, 1, 1]), "resnet_layers"),
        (DualClipConfig, dict(loss_type="triplet"), "loss_type"),
        (DualClipConfig, dict(loss_type="sigmoid"), "logit_bias_init_value"),
    ],
)
def test_bad_configs_name_the_field(config_class, kwargs, field):
    # transformers' strict dataclass validation: type and `Literal` errors name the field, class validators too.
    with pytest.raises(StrictDataclassError, match=field):
        config_class(**kwargs)


def test_bad_inputs_raise_clear_errors(model):
    ids, mask = text_batch()
    with pytest.raises(ValueError, match="pixel_values.*3 channels|channels"):
        model.get_image_features(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="pixel_values is 40x40"):
        model.get_image_features(torch.randn(2, 3, 40, 40))
    with pytest.raises(ValueError, match="pixel_values must be a float tensor"):
        model.get_image_features(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.get_text_features(torch.full((1, 4), TEXT["vocab_size"]))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.get_text_features(torch.ones(1, TEXT["max_position_embeddings"] + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids is required"):
        model.get_text_features(None)
    with pytest.raises(ValueError, match="one caption per image"):
        model(input_ids=ids, attention_mask=mask, pixel_values=pixel_batch(batch=3), return_loss=True)


def test_public_names():
    for name in [
        "DualClipConfig", "DualClipTextConfig", "DualClipVisionConfig", "DualClipModel", "DualClipTextModel",
        "DualClipTextModelWithProjection", "DualClipVisionModel", "DualClipVisionModelWithProjection",
    ]:
        assert hasattr(dualclip, name)

"""Called as transformers calls its CLIP classes, dualclip's classes compute what stock computes: every attention
implementation (set at load or later, registered ones included), seeded initialisation, unclamped logits; the
explicit fast API (`encode_text`/`encode_image`, `pooled_only`) gives the same features as stock and OpenCLIP."""

import pytest
import torch
import transformers
from tiny_models import MODEL, TEXT, VISION, max_diff, pixel_batch, text_batch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

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
ABOVE_THE_TRAINING_CAP = 5.0  # exp(5) = 148 > 100: logits would differ if forward clamped to ln(100)

CALLS = {"count": 0}


def _counting_attention(*args, **kwargs):
    CALLS["count"] += 1
    return sdpa_attention_forward(*args, **kwargs)


AttentionInterface.register("dualclip_test_counting", _counting_attention)
AttentionMaskInterface.register("dualclip_test_counting", sdpa_mask)


@pytest.fixture(scope="module")
def stock_folder(tmp_path_factory):
    torch.manual_seed(11)
    stock = transformers.CLIPModel(transformers.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=24))
    with torch.no_grad():
        stock.logit_scale.fill_(ABOVE_THE_TRAINING_CAP)
    folder = tmp_path_factory.mktemp("stock")
    stock.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def stock(stock_folder):
    return transformers.CLIPModel.from_pretrained(stock_folder, attn_implementation="eager").eval()


def _inputs(mask: bool) -> dict:
    ids, attention_mask = text_batch(lengths=(5, 16, 9, 2))
    inputs = dict(input_ids=ids, pixel_values=pixel_batch(batch=4))
    if mask:
        inputs["attention_mask"] = attention_mask
    return inputs


def _assert_same_outputs(ours, stock, inputs):
    with torch.no_grad():
        expected = stock(**inputs, output_hidden_states=True)
        got = ours(**inputs, output_hidden_states=True)
    for field in ("logits_per_text", "text_embeds", "image_embeds"):
        # 1e-5 relative to the scale of what is compared (logits reach exp(logit_scale)).
        assert max_diff(got[field], expected[field]) < TOLERANCE * max(1.0, expected[field].abs().max()), field
    for side in ("text_model_output", "vision_model_output"):
        for mine, theirs in zip(got[side].hidden_states, expected[side].hidden_states, strict=True):
            assert max_diff(mine, theirs) < TOLERANCE * max(1.0, theirs.abs().max().item()), side


@pytest.mark.parametrize("mask", [True, False], ids=["padding_mask", "no_mask"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention", "dualclip_test_counting"])
def test_attention_implementations_at_load_give_stock_numbers(stock_folder, stock, implementation, mask):
    ours = DualClipModel.from_pretrained(stock_folder, attn_implementation=implementation).eval()
    assert ours.config.text_config._attn_implementation == implementation
    assert ours.config.vision_config._attn_implementation == implementation
    before = CALLS["count"]
    _assert_same_outputs(ours, stock, _inputs(mask))
    if implementation == "dualclip_test_counting":
        layers = TEXT["num_hidden_layers"] + VISION["num_hidden_layers"]
        assert CALLS["count"] - before == layers  # the registered function computed every layer


@pytest.mark.parametrize("implementation", ["eager", "flex_attention", "dualclip_test_counting", "sdpa"])
def test_set_attn_implementation_switches_every_layer(stock_folder, stock, implementation):
    ours = DualClipModel.from_pretrained(stock_folder).eval()
    ours.set_attn_implementation(implementation)
    for config in (ours.config, ours.config.text_config, ours.config.vision_config):
        assert config._attn_implementation == implementation
    _assert_same_outputs(ours, stock, _inputs(mask=True))
    with torch.no_grad():  # the pooled fast path runs through the same implementation
        before = CALLS["count"]
        fast = ours.encode_text(_inputs(True)["input_ids"], attention_mask=_inputs(True)["attention_mask"])
        expected = stock.get_text_features(**{k: v for k, v in _inputs(True).items() if k != "pixel_values"})
    assert max_diff(fast, expected.pooler_output) < TOLERANCE
    if implementation == "dualclip_test_counting":
        assert CALLS["count"] - before == TEXT["num_hidden_layers"]


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
def test_pooled_only_and_encode_equal_the_full_computation(stock_folder, stock, implementation):
    ours = DualClipModel.from_pretrained(stock_folder, attn_implementation=implementation).eval()
    inputs = _inputs(mask=True)
    text_inputs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    with torch.no_grad():
        full = stock(**inputs)
        pooled = ours(**inputs, pooled_only=True)
        text = ours.encode_text(**text_inputs)
        image = ours.encode_image(inputs["pixel_values"])
        stock_text = stock.get_text_features(**text_inputs).pooler_output
        stock_image = stock.get_image_features(inputs["pixel_values"]).pooler_output
    assert max_diff(pooled.logits_per_text, full.logits_per_text) < TOLERANCE * full.logits_per_text.abs().max()
    assert max_diff(text, stock_text) < TOLERANCE and max_diff(image, stock_image) < TOLERANCE
    with torch.no_grad():
        normalized = ours.encode_text(**text_inputs, normalize=True)
    assert max_diff(normalized, torch.nn.functional.normalize(stock_text, dim=-1)) < TOLERANCE


def test_logits_are_not_clamped_at_inference(stock_folder, stock):
    ours = DualClipModel.from_pretrained(stock_folder).eval()
    assert ours.logit_scale.item() == ABOVE_THE_TRAINING_CAP
    inputs = _inputs(mask=True)
    with torch.no_grad():
        got, expected = ours(**inputs), stock(**inputs)
    scale = expected.logits_per_text.abs().max()
    # Clamped to ln(100), every logit would be 100 / exp(5) = 0.67 times stock's.
    assert max_diff(got.logits_per_text, expected.logits_per_text) < TOLERANCE * scale


def test_default_outputs_have_stock_fields_and_shapes(stock_folder, stock):
    ours = DualClipModel.from_pretrained(stock_folder).eval()
    inputs = _inputs(mask=True)
    with torch.no_grad():
        got, expected = ours(**inputs), stock(**inputs)
        got_tuple, expected_tuple = ours(**inputs, return_dict=False), stock(**inputs, return_dict=False)
    assert list(got.keys()) == list(expected.keys())
    for side in ("text_model_output", "vision_model_output"):
        assert got[side].last_hidden_state.shape == expected[side].last_hidden_state.shape
    assert len(got_tuple) == len(expected_tuple)


STOCK_AND_OURS = [
    (transformers.CLIPModel, transformers.CLIPConfig, DualClipModel, DualClipConfig, MODEL),
    (transformers.CLIPTextModel, transformers.CLIPTextConfig, DualClipTextModel, DualClipTextConfig, TEXT),
    (transformers.CLIPTextModelWithProjection, transformers.CLIPTextConfig, DualClipTextModelWithProjection,
     DualClipTextConfig, TEXT),
    (transformers.CLIPVisionModel, transformers.CLIPVisionConfig, DualClipVisionModel, DualClipVisionConfig, VISION),
    (transformers.CLIPVisionModelWithProjection, transformers.CLIPVisionConfig, DualClipVisionModelWithProjection,
     DualClipVisionConfig, VISION),
]


@pytest.mark.parametrize("stock_class, stock_config, our_class, our_config, values", STOCK_AND_OURS,
                         ids=[row[2].__name__ for row in STOCK_AND_OURS])
def test_seeded_initialisation_equals_stock(stock_class, stock_config, our_class, our_config, values):
    torch.manual_seed(0)
    reference = stock_class(stock_config(**values)).state_dict()
    torch.manual_seed(0)
    ours = our_class(our_config(**values)).state_dict()
    # transformers 5 towers save flat keys (`embeddings.`); ours keep the `text_model.`/`vision_model.` prefix.
    prefix = {DualClipTextModel: "text_model.", DualClipVisionModel: "vision_model."}.get(our_class, "")
    assert {prefix + key for key in reference} == set(ours)
    differing = [key for key in reference if not torch.equal(reference[key], ours[prefix + key])]
    assert not differing


def test_configs_stock_accepts_are_accepted():
    # transformers' own CLIP tests use a 99-token vocabulary with the default (out-of-vocabulary) eos_token_id.
    config = DualClipTextConfig(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=37)
    model = DualClipTextModel(config).eval()
    ids = torch.randint(0, 99, (2, 7))
    stock = transformers.CLIPTextModel(transformers.CLIPTextConfig(**config.to_diff_dict())).eval()
    stock.load_state_dict({k.removeprefix("text_model."): v for k, v in model.state_dict().items()})
    with torch.no_grad():
        assert max_diff(model(ids).pooler_output, stock(ids).pooler_output) < TOLERANCE


def test_bad_text_inputs_are_named():
    model = DualClipTextModel(DualClipTextConfig(**TEXT)).eval()
    ids, mask = text_batch()
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(ids, mask[:, :-1])
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(ids, mask[:1])
    for empty in (ids[:0], ids[:, :0]):
        with pytest.raises(ValueError, match="input_ids is empty"):
            model(empty)
    with pytest.raises(ValueError, match="pixel_values is empty"):
        DualClipVisionModel(DualClipVisionConfig(**VISION))(torch.zeros(0, 3, 32, 32))


def test_nan_pixels_give_nan_features_for_that_image_only():
    model = DualClipVisionModelWithProjection(DualClipVisionConfig(**VISION)).eval()
    pixels = pixel_batch(batch=3)
    pixels[1, 0, 4, 4] = float("nan")
    with torch.no_grad():
        embeds = model.encode_image(pixels)
        clean = model.encode_image(pixel_batch(batch=3))
    assert torch.isnan(embeds[1]).all()
    assert max_diff(embeds[[0, 2]], clean[[0, 2]]) < TOLERANCE


def test_public_fast_api_exists_where_projections_do():
    for cls in (DualClipModel, DualClipTextModelWithProjection):
        assert callable(cls.encode_text)
    for cls in (DualClipModel, DualClipVisionModelWithProjection):
        assert callable(cls.encode_image)
    assert dualclip.DualClipResNetConfig.model_type == "dualclip_resnet_vision_model"


@pytest.mark.parametrize("our_class", [DualClipTextModel, DualClipTextModelWithProjection, DualClipModel])
def test_save_pretrained_takes_what_diffusers_passes_by_name(our_class, tmp_path):
    """diffusers passes `variant`, `max_shard_size`, ... to a component's `save_pretrained` only when its signature
    names them (as `PreTrainedModel.save_pretrained` does); with `variant` the weights file carries it."""
    import inspect

    ours = inspect.signature(our_class.save_pretrained).parameters
    stock = inspect.signature(transformers.PreTrainedModel.save_pretrained).parameters
    assert list(ours) == list(stock)
    assert ours["save_original_format"].default is False  # dualclip's prefixed layout, always
    config = {DualClipModel: DualClipConfig(**MODEL)}.get(our_class, DualClipTextConfig(**TEXT))
    our_class(config).save_pretrained(tmp_path, variant="fp16", max_shard_size="50MB")
    assert (tmp_path / "model.fp16.safetensors").is_file() and not (tmp_path / "model.safetensors").exists()
    assert our_class.from_pretrained(tmp_path, variant="fp16") is not None


def test_fast_api_keeps_a_padding_mask_the_pooled_positions_can_see(stock_folder, stock):
    """Right padding (after EOS) cannot reach a pooled position under the causal mask and is dropped by the fast
    path; left padding can, and is kept: both give stock's features."""
    ours = DualClipModel.from_pretrained(stock_folder).eval()
    ids, mask = text_batch(lengths=(5, 16, 9, 2))
    left_ids, left_mask = ids.clone(), mask.clone()
    for row, length in enumerate(mask.sum(-1).tolist()):  # move each caption to the end of its row
        left_ids[row] = torch.roll(ids[row], 16 - length)
        left_mask[row] = torch.roll(mask[row], 16 - length)
    with torch.no_grad():
        for batch_ids, batch_mask in ((ids, mask), (left_ids, left_mask)):
            expected = stock.get_text_features(input_ids=batch_ids, attention_mask=batch_mask).pooler_output
            got = ours.encode_text(batch_ids, attention_mask=batch_mask)
            assert max_diff(got, expected) < TOLERANCE

"""Every dualclip class equals the matching transformers CLIP class on the same random weights (fp32, 1e-5).

The stock model is saved with `save_pretrained` and both libraries load that same folder, so these tests also
cover loading a transformers CLIP folder into each dualclip class.
"""

import pytest
import torch
import transformers
from tiny_models import MODEL, TEXT, VISION, max_diff, pixel_batch, text_batch

import dualclip

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    transformers.CLIPModel(transformers.CLIPConfig(**MODEL)).save_pretrained(folder)
    return folder


def load_pair(stock_class, our_class, folder, attn_implementation):
    stock = stock_class.from_pretrained(folder, attn_implementation=attn_implementation).eval()
    ours = our_class.from_pretrained(folder, attn_implementation=attn_implementation).eval()
    return stock, ours


def assert_same_sequence_outputs(stock_out, our_out, *, with_attentions):
    assert max_diff(stock_out.last_hidden_state, our_out.last_hidden_state) < TOLERANCE
    assert len(stock_out.hidden_states) == len(our_out.hidden_states)
    for stock_state, our_state in zip(stock_out.hidden_states, our_out.hidden_states):
        assert max_diff(stock_state, our_state) < TOLERANCE
    if with_attentions:
        assert len(stock_out.attentions) == len(our_out.attentions) > 0
        for stock_weights, our_weights in zip(stock_out.attentions, our_out.attentions):
            assert max_diff(stock_weights, our_weights) < TOLERANCE


IMPLEMENTATIONS = ["sdpa", "eager"]
MASKS = [pytest.param(True, id="with_mask"), pytest.param(False, id="without_mask")]


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("use_mask", MASKS)
def test_text_model_matches(clip_folder, attn_implementation, use_mask):
    stock, ours = load_pair(transformers.CLIPTextModel, dualclip.DualClipTextModel, clip_folder, attn_implementation)
    ids, mask = text_batch()
    kwargs = dict(input_ids=ids, attention_mask=mask if use_mask else None, output_hidden_states=True)
    with_attentions = attn_implementation == "eager"
    with torch.no_grad():
        stock_out = stock(**kwargs, output_attentions=with_attentions)
        our_out = ours(**kwargs, output_attentions=with_attentions)
    assert max_diff(stock_out.pooler_output, our_out.pooler_output) < TOLERANCE
    assert_same_sequence_outputs(stock_out, our_out, with_attentions=with_attentions)


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("use_mask", MASKS)
def test_text_model_with_projection_matches(clip_folder, attn_implementation, use_mask):
    stock, ours = load_pair(
        transformers.CLIPTextModelWithProjection, dualclip.DualClipTextModelWithProjection, clip_folder,
        attn_implementation,
    )
    ids, mask = text_batch()
    kwargs = dict(input_ids=ids, attention_mask=mask if use_mask else None, output_hidden_states=True)
    with_attentions = attn_implementation == "eager"
    with torch.no_grad():
        stock_out = stock(**kwargs, output_attentions=with_attentions)
        our_out = ours(**kwargs, output_attentions=with_attentions)
    assert list(stock_out.keys()) == list(our_out.keys())
    assert max_diff(stock_out.text_embeds, our_out.text_embeds) < TOLERANCE
    assert_same_sequence_outputs(stock_out, our_out, with_attentions=with_attentions)


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "stock_class, our_class",
    [
        (transformers.CLIPVisionModel, dualclip.DualClipVisionModel),
        (transformers.CLIPVisionModelWithProjection, dualclip.DualClipVisionModelWithProjection),
    ],
)
def test_vision_models_match(clip_folder, attn_implementation, stock_class, our_class):
    stock, ours = load_pair(stock_class, our_class, clip_folder, attn_implementation)
    with_attentions = attn_implementation == "eager"
    kwargs = dict(pixel_values=pixel_batch(), output_hidden_states=True, output_attentions=with_attentions)
    with torch.no_grad():
        stock_out, our_out = stock(**kwargs), ours(**kwargs)
    assert list(stock_out.keys()) == list(our_out.keys())
    pooled = "image_embeds" if "image_embeds" in stock_out else "pooler_output"
    assert max_diff(stock_out[pooled], our_out[pooled]) < TOLERANCE
    assert_same_sequence_outputs(stock_out, our_out, with_attentions=with_attentions)


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("use_mask", MASKS)
def test_dual_model_matches(clip_folder, attn_implementation, use_mask):
    stock, ours = load_pair(transformers.CLIPModel, dualclip.DualClipModel, clip_folder, attn_implementation)
    ids, mask = text_batch()
    with_attentions = attn_implementation == "eager"
    kwargs = dict(
        input_ids=ids, attention_mask=mask if use_mask else None, pixel_values=pixel_batch(batch=4),
        output_hidden_states=True, output_attentions=with_attentions, return_loss=True,
    )
    with torch.no_grad():
        stock_out, our_out = stock(**kwargs), ours(**kwargs)
    assert list(stock_out.keys()) == list(our_out.keys())
    for field in ("loss", "logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        assert max_diff(stock_out[field], our_out[field]) < TOLERANCE, field
    for tower in ("text_model_output", "vision_model_output"):
        assert max_diff(stock_out[tower].pooler_output, our_out[tower].pooler_output) < TOLERANCE
        assert_same_sequence_outputs(stock_out[tower], our_out[tower], with_attentions=with_attentions)


def test_get_features_follow_the_installed_convention(clip_folder):
    stock, ours = load_pair(transformers.CLIPModel, dualclip.DualClipModel, clip_folder, "sdpa")
    ids, mask = text_batch()
    pixels = pixel_batch()
    with torch.no_grad():
        stock_text, our_text = stock.get_text_features(ids, mask), ours.get_text_features(ids, mask)
        stock_image, our_image = stock.get_image_features(pixels), ours.get_image_features(pixels)
    assert type(our_text) is type(stock_text) and type(our_image) is type(stock_image)
    assert max_diff(stock_text.pooler_output, our_text.pooler_output) < TOLERANCE
    assert max_diff(stock_image.pooler_output, our_image.pooler_output) < TOLERANCE


def test_return_dict_false_gives_the_same_tuple_layout(clip_folder):
    stock, ours = load_pair(transformers.CLIPTextModelWithProjection, dualclip.DualClipTextModelWithProjection,
                            clip_folder, "sdpa")
    ids, _ = text_batch()
    with torch.no_grad():
        stock_out = stock(ids, output_hidden_states=True, return_dict=False)
        our_out = ours(ids, output_hidden_states=True, return_dict=False)
    assert len(stock_out) == len(our_out)
    assert max_diff(stock_out[0], our_out[0]) < TOLERANCE


def test_flat_transformers5_tower_folders_load(tmp_path):
    """transformers >= 5 saves CLIPTextModel/CLIPVisionModel without the `text_model.`/`vision_model.` prefix."""
    torch.manual_seed(1)
    text, vision = tmp_path / "text", tmp_path / "vision"
    stock_text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**TEXT)).eval()
    stock_vision = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)).eval()
    stock_text.save_pretrained(text)
    stock_vision.save_pretrained(vision)
    our_text, info = dualclip.DualClipTextModel.from_pretrained(text, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    our_vision, info = dualclip.DualClipVisionModel.from_pretrained(vision, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask = text_batch()
    with torch.no_grad():
        assert max_diff(stock_text(ids, mask).pooler_output, our_text(ids, mask).pooler_output) < TOLERANCE
        pixels = pixel_batch()
        assert max_diff(stock_vision(pixels).pooler_output, our_vision(pixels).pooler_output) < TOLERANCE


def test_legacy_eos_token_id_2(tmp_path):
    """Configs from before transformers PR #24773 say eos_token_id 2 and pool at argmax(ids)."""
    torch.manual_seed(2)
    stock = transformers.CLIPTextModel(transformers.CLIPTextConfig(**{**TEXT, "eos_token_id": 2})).eval()
    stock.save_pretrained(tmp_path)
    ours = dualclip.DualClipTextModel.from_pretrained(tmp_path).eval()
    assert ours.config.eos_token_id == 2  # not OpenAI's vocabulary: the real EOS is unknown, argmax as stock
    ids, mask = text_batch()
    with torch.no_grad():
        assert max_diff(stock(ids, mask).pooler_output, ours(ids, mask).pooler_output) < TOLERANCE

    # OpenAI's vocabulary: read as the real EOS, so a token added above it (textual inversion) cannot move pooling.
    openai_vocab = {**TEXT, "vocab_size": 49408, "eos_token_id": 2}
    ours = dualclip.DualClipTextModel(dualclip.DualClipTextConfig(**openai_vocab)).eval()
    assert ours.config.eos_token_id == 49407
    ours.resize_token_embeddings(49409)
    with_added = torch.tensor([[49406, 320, 49408, 49407, 0, 0]])
    with torch.no_grad():
        out = ours(with_added)
    assert torch.equal(out.pooler_output[0], out.last_hidden_state[0, 3])

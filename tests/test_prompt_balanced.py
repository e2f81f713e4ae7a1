"""syntax="balanced": dualclip's earlier rules (A1111's brackets, only pairs weight text), its parser and chunking,
and the embeddings it gives."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tiny_diffusion as tiny
from tiny_diffusion import tok, tok_2  # noqa: F401  (pytest fixtures)
from dualclip import DualClipTextModel, DualClipTextModelWithProjection
from dualclip.conditioning import BREAK, PromptEncoder, parse_prompt_weights, tokenize_prompt


def tokenize_weighted_prompt(prompt, tokenizer):
    return tokenize_prompt(prompt, tokenizer, syntax="balanced")

UP, DOWN = 1.1, 1 / 1.1

@pytest.fixture(scope="module", autouse=True)
def single_thread():
    yield from tiny.one_torch_thread()


# ---- parse_prompt_weights --------------------------------------------------------------------------------------------

PARSE_CASES = [
    ("a photo of a cat", [("a photo of a cat", 1.0)]),
    ("", []),
    ("a (cat) b", [("a ", 1.0), ("cat", UP), (" b", 1.0)]),
    ("[cat]", [("cat", DOWN)]),
    ("((cat))", [("cat", UP * UP)]),
    ("[[cat]]", [("cat", DOWN * DOWN)]),
    ("(cat:1.3)", [("cat", 1.3)]),
    ("(cat: 0.5 )", [("cat", 0.5)]),
    ("(cat:-1)", [("cat", -1.0)]),
    ("(cat:.5)", [("cat", 0.5)]),
    ("((cat:1.5) dog)", [("cat", 1.5 * UP), (" dog", UP)]),
    ("[(cat:2)]", [("cat", 2 * DOWN)]),
    ("(a [b] c)", [("a ", UP), ("b", UP * DOWN), (" c", UP)]),
    ("(red)(car)", [("red", UP), ("car", UP)]),  # a bracket is a word boundary: not merged into "redcar"
    # escapes
    (r"\(cat\)", [("(cat)", 1.0)]),
    (r"\[cat\]", [("[cat]", 1.0)]),
    (r"(\(cat\))", [("(cat)", UP)]),
    (r"a\\b", [("a\\b", 1.0)]),
    (r"\cat", [("\\cat", 1.0)]),
    (r"(a\)", [("(a)", 1.0)]),  # the escaped ")" closes nothing; "(" stays unpaired
    # unbalanced and mismatched brackets are literal text
    ("(cat", [("(cat", 1.0)]),
    ("cat)", [("cat)", 1.0)]),
    ("[cat", [("[cat", 1.0)]),
    ("cat]", [("cat]", 1.0)]),
    ("((cat)", [("(", 1.0), ("cat", UP)]),
    ("(cat))", [("cat", UP), (")", 1.0)]),
    ("(cat]", [("(cat]", 1.0)]),
    ("([cat)]", [("[cat", UP), ("]", 1.0)]),  # ")" pairs with "(", leaving "[" unpaired inside
    ("a:1.3) b", [("a:1.3) b", 1.0)]),
    ("[cat:1.3]", [("cat:1.3", DOWN)]),  # ":w" only weights round brackets
    ("(cat:dog)", [("cat:dog", UP)]),
    ("(cat:1.2.3)", [("cat:1.2.3", UP)]),
    ("(cat:1.5", [("(cat:1.5", 1.0)]),
    ("(a:1.5:2)", [("a:1.5", 2.0)]),
    ("()", []),
    ("x()y", [("x", 1.0), ("y", 1.0)]),
    # BREAK
    ("a BREAK b", [("a", 1.0), (BREAK, None), ("b", 1.0)]),
    ("a BREAK", [("a", 1.0), (BREAK, None)]),
    ("BREAK", [(BREAK, None)]),
    ("(a BREAK b:1.5)", [("a", 1.5), (BREAK, None), ("b", 1.5)]),
    ("aBREAK b break BREAKS", [("aBREAK b break BREAKS", 1.0)]),
    ("a,BREAK,b", [("a,", 1.0), (BREAK, None), (",b", 1.0)]),
]


@pytest.mark.parametrize("text, expected", PARSE_CASES)
def test_parse_prompt_weights(text, expected):
    result = parse_prompt_weights(text)
    assert [t for t, _ in result] == [t for t, _ in expected]
    for (_, weight), (_, expected_weight) in zip(result, expected):
        assert (weight is None and expected_weight is None) or weight == pytest.approx(expected_weight, rel=1e-12)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="()[]\\: .-12abBREAK", max_size=40))
def test_parse_never_fails_and_keeps_plain_characters(text):
    fragments = parse_prompt_weights(text)
    assert all(w is None or math.isfinite(w) for _, w in fragments)
    kept = "".join(t for t, w in fragments if w is not None)
    # every letter of the prompt survives except those of BREAK markers
    assert sum(c in "abBREAK" for c in kept) == sum(c in "abBREAK" for c in text) - 5 * sum(
        w is None for _, w in fragments
    )


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="()[]\\:B"), max_size=40))
def test_parse_plain_text_is_unchanged(text):
    assert parse_prompt_weights(text) == ([(text, 1.0)] if text else [])


# ---- chunking ------------------------------------------------------------------------------------------------


def words(tokenizer, count: int, seed: int = 0) -> str:
    """A prompt of `count` tokens: common one-token words, checked against the tokenizer."""
    vocabulary = "cat dog house tree river mountain city night red blue green light dark old new small big".split()
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(vocabulary), (count,), generator=generator).tolist()
    text = " ".join(vocabulary[i] for i in picks)
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == count
    return text


def wrap(tokenizer, ids, length=75):
    """`[BOS] ids [EOS] [pad...]`, written out independently of the code under test."""
    row = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    return torch.tensor(row + [tokenizer.pad_token_id] * (length + 2 - len(row)))


def test_short_prompt_is_one_chunk_as_the_pipeline_tokenizes_it(tok, tok_2):
    for tokenizer in (tok, tok_2):
        ids, weights = tokenize_weighted_prompt("a photo of a cat", tokenizer)
        expected = tokenizer("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert torch.equal(ids, expected)
        assert torch.equal(weights, torch.ones(1, 77))


def test_long_prompt_splits_into_75_token_chunks(tok):
    text = words(tok, 200)
    all_ids = tok(text, add_special_tokens=False)["input_ids"]
    ids, weights = tokenize_weighted_prompt(text, tok)
    assert ids.shape == weights.shape == (3, 77)
    for chunk, start in enumerate(range(0, 200, 75)):
        assert torch.equal(ids[chunk], wrap(tok, all_ids[start : start + 75]))


@pytest.mark.parametrize("count, chunks", [(0, 1), (1, 1), (75, 1), (76, 2), (150, 2), (151, 3)])
def test_chunk_boundaries(tok, count, chunks):
    ids, _ = tokenize_weighted_prompt(words(tok, count) if count else "", tok)
    assert ids.shape == (chunks, 77)
    assert int((ids[-1] == tok.eos_token_id).int().argmax()) == (count - 75 * (chunks - 1)) + 1


def test_break_starts_a_new_chunk(tok):
    cat, dog = tok("cat dog", add_special_tokens=False)["input_ids"]
    ids, _ = tokenize_weighted_prompt("cat BREAK dog", tok)
    assert torch.equal(ids, torch.stack([wrap(tok, [cat]), wrap(tok, [dog])]))
    assert tokenize_weighted_prompt("cat BREAK", tok)[0].shape[0] == 1
    assert torch.equal(tokenize_weighted_prompt("BREAK dog", tok)[0], torch.stack([wrap(tok, []), wrap(tok, [dog])]))
    assert tokenize_weighted_prompt("cat BREAK BREAK dog", tok)[0].shape[0] == 3
    # BREAK inside a full chunk's worth of text: the chunk ends early, the count restarts
    ids, _ = tokenize_weighted_prompt(words(tok, 70) + " BREAK " + words(tok, 10, seed=1), tok)
    assert ids.shape[0] == 2 and int((ids[1] == tok.eos_token_id).int().argmax()) == 11


def test_token_weights(tok):
    ids, weights = tokenize_weighted_prompt("a (red:1.5) car on a [[rainy]] street", tok)
    pieces = ["a", "red", "car on a", "rainy", "street"]
    piece_weights = [1.0, 1.5, 1.0, DOWN * DOWN, 1.0]
    expected = [1.0]  # BOS
    for piece, weight in zip(pieces, piece_weights):
        expected += [weight] * len(tok(piece, add_special_tokens=False)["input_ids"])
    expected += [1.0] * (77 - len(expected))
    assert torch.allclose(weights[0], torch.tensor(expected))
    assert torch.equal(ids, tokenize_weighted_prompt("a red car on a rainy street", tok)[0])


# ---- encoding --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    folders = tiny.save_stock_text_encoders(str(tmp_path_factory.mktemp("stock")))
    encoders = (DualClipTextModel.from_pretrained(folders["text_encoder"]).eval(),
                DualClipTextModelWithProjection.from_pretrained(folders["text_encoder_2"]).eval())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking final norms: mean-restoring divides by a chunk's mean
        for encoder in encoders:
            norm = encoder.text_model.final_layer_norm
            norm.bias.copy_(0.3 + 0.2 * torch.randn(norm.bias.shape, generator=generator))
    return encoders


def encode_alone(encoder, ids):
    with torch.no_grad():
        return encoder(ids[None]).last_hidden_state[0]


def test_weighting_restores_the_chunk_mean(encoders, tok):
    text_encoder, _ = encoders
    prompt = "a (red:1.5) car on a [[rainy]] street, (night)"
    pieces = [("a", 1.0), ("red", 1.5), ("car on a", 1.0), ("rainy", DOWN * DOWN), ("street,", 1.0), ("night", UP)]
    ids, weights = [], []
    for piece, weight in pieces:
        piece_ids = tok(piece, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        weights += [weight] * len(piece_ids)
    plain = encode_alone(text_encoder, wrap(tok, ids))
    position_weights = torch.ones(77)
    position_weights[1 : len(weights) + 1] = torch.tensor(weights)
    expected = plain * position_weights[:, None]
    expected = expected * (plain.mean() / expected.mean())

    result = PromptEncoder(tok, text_encoder, syntax="balanced").encode(prompt)
    torch.testing.assert_close(result["prompt_embeds"][0], expected, atol=1e-6, rtol=1e-6)
    # The mean restored is near 0 (LayerNorm output): compare on the scale of the features, not relative to it.
    scale = float(plain.abs().max())
    assert float(result["prompt_embeds"].mean()) == pytest.approx(float(plain.mean()), abs=1e-6 * scale)


def test_every_text_is_padded_with_empty_chunks(encoders, tok):
    text_encoder, _ = encoders
    encoder = PromptEncoder(tok, text_encoder, syntax="balanced")
    result = encoder.encode([words(tok, 100), "a (cat:1.4)"], negative_prompt="blurry")
    empty = encode_alone(text_encoder, wrap(tok, []))
    assert result["prompt_embeds"].shape == result["negative_prompt_embeds"].shape == (2, 2 * 77, tiny.HIDDEN)
    torch.testing.assert_close(result["prompt_embeds"][1, 77:], empty, atol=1e-6, rtol=0)
    torch.testing.assert_close(result["negative_prompt_embeds"][0, 77:], empty, atol=1e-6, rtol=0)


def test_sdxl_none_negative_is_zeros_but_empty_string_is_encoded(encoders, tok, tok_2):
    """diffusers' force_zeros_for_empty_prompt: only a missing negative prompt becomes zeros."""
    encoder = PromptEncoder([tok, tok_2], list(encoders), convention="sdxl", syntax="balanced")
    missing = encoder.encode(words(tok, 100))
    assert bool((missing["negative_prompt_embeds"] == 0).all()) and missing["negative_prompt_embeds"].shape[1] == 154
    assert bool((missing["negative_pooled_prompt_embeds"] == 0).all())
    empty = encoder.encode(words(tok, 100), negative_prompt="")
    assert not bool((empty["negative_prompt_embeds"] == 0).all())

"""DualClipTokenizer against OpenAI's original tokenizer (clip.simple_tokenizer / clip.tokenize).

Every comparison is with the reference implementation's output, never with numbers copied from ours.
"""

import html
import itertools
import json
import os
import pickle
import subprocess
import sys
import warnings

import ftfy
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, pre_tokenizers

from dualclip.tokenization_dualclip import (
    DualClipTokenizer,
    build_decoder,
    build_model,
    build_normalizer,
    build_pre_tokenizer,
    byte_alphabet,
    clean_text,
    fast_words,
    load_openai_bpe,
    needs_python_cleaning,
    split_words,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip imports pkg_resources
    import clip
    from clip.simple_tokenizer import SimpleTokenizer, bytes_to_unicode


PROSE = [
    # A few paragraphs of ordinary prose, as captions and alt texts are written.
    "The ferry left the harbour at dawn, its deck crowded with cyclists, commuters and a brass band that "
    "nobody had hired. By the time we reached the island the fog had lifted; the lighthouse, freshly "
    "painted red and white, stood out against a sky so blue it looked retouched.",
    "She said it's the third time this week they've closed the bridge -- \"maintenance,\" apparently. "
    "I'd have taken the tunnel, but you'll remember what happened in 2019 (and again on 12/03/2021).",
    "Recipe: 2 cups flour, 1.5 tsp salt, 3/4 cup water @ 40C. Knead for 10-12 min; rest 1h. Bake at 230C "
    "until golden!!! Serves 4-6 people, or 1 very hungry one.",
    "A close-up photo of a tabby cat sleeping on a stack of old National Geographic magazines, soft window "
    "light, shallow depth of field, 50mm f/1.8, award-winning photography, trending on ArtStation",
    "Q: What's the difference between a Boeing 737-800 and an Airbus A320neo?\nA: Mostly the engines,\tthe "
    "cockpit and about $10M.\r\n\r\nThanks!",
]
EDGE_CASES = [
    "",
    " ",
    "\t\n\r\x0c",
    "a",
    "A PHOTO OF A DOG",
    "it's they're we've I'm you'll he'd don't IT'S",
    "''s 's' '''' 'S",
    "a!?b ''' ,,, ... ?!?! !!",
    "Tom &amp; Jerry &amp;amp; friends &lt;3 &gt;_&lt; &quot;hi&quot; &#39;quoted&#39; &#x263A; &#233;t&#233;",
    "R&D, AT&T & co, &&, a&b, fish & chips, & the end &",
    "&amp",
    "&notit; &not it; &copy2024 &#; &#x; &#12345678901;",
    "\u201ccurly quotes\u201d and \u2018single ones\u2019 \u2014 with \u2013 dashes \u2026",
    "\ufb01sh \ufb02ower \ufb00 \ufb03 \ufb04 \ufb05 \ufb06 o\ufb03ce",
    "\uff21\uff22\uff23\uff11\uff12\uff13 \uff48\uff45\uff4c\uff4c\uff4f\uff01 \u3000full\u3000width\u3000space",
    "caf\u00c3\u00a9 na\u00c3\u00afve \u00e2\u20ac\u2122 \u00e2\u20ac\u0153quoted\u00e2\u20ac\ufffd r\u00c3\u00a9sum\u00c3\u00a9",
    "the Mona Lisa\u00e2\u20ac\u2122s smile",
    "\U0001f431\U0001f436 \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f \U0001f1eb\U0001f1f7 emoji!",
    "\u732b\u306e\u5199\u771f \u6771\u4eac\u30bf\u30ef\u30fc \ud55c\uad6d\uc5b4 \u4e2d\u6587\u5b57\u7b26",
    "e\u0301te\u0301 cafe\u0301 n\u0303 A\u030a \u0430\u0301",
    "\u00c9T\u00c9 \u0130stanbul \u03a3\u039f\u03a6\u039f\u03a3 stra\u00dfe \u1e9e \u017fs",
    "\u0418\u0432\u0430\u043d \u041f\u0435\u0442\u0440\u043e\u0432 \u00e9\u00e8\u00ea\u00eb \u00f1 \u00fc\u00f6\u00e4",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea \u0939\u093f\u0928\u094d\u0926\u0940 \u0e44\u0e17\u0e22",
    "control\x00chars\x01here\x07and\x1b[31mred\x1b[0m and\x7fdel \x1c\x1d\x1e\x1f end\x1c",
    "\x1cleading and trailing file separators\x1f",
    "tabs\tand\nnewlines\r\nand\rcarriage\x0bvtab\x0cformfeed\u2028line\u2029para\x85nel",
    "non\u00a0breaking\u00a0space \u200bzero\u200bwidth \ufeffbom \u2009thin\u200a",
    "<|startoftext|>a photo<|endoftext|> <|STARTOFTEXT|> <|EndOfText|>",
    "hello <|endoftext|> world!<|endoftext|> .<|startoftext|> '<|endoftext|>'s",
    "<|\u017ftartoftext|> <|startoftext <|end of text|> <||>",
    "&lt;|endoftext|&gt; &lt;|startoftext|&gt;x",
    "</w> a</w>b <w>",
    "x" * 300,
    "supercalifragilisticexpialidocious " * 30,
    " ".join(str(i) for i in range(200)),
    "\ud800 lone surrogate \udfff",
    "\U000e0041 tag chars \U000e007f and \ufff9interlinear\ufffb",
    "\u1c89\ua7cb new capital letters",
]
CORPUS = PROSE + EDGE_CASES


ORIGINAL = SimpleTokenizer()


@pytest.fixture(scope="module")
def tok():
    return DualClipTokenizer()


@pytest.fixture(scope="module")
def original():
    return ORIGINAL


def clip_padded(texts, truncate=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clip.tokenize(texts, truncate=truncate)


# ---- vocabulary and the pipeline steps --------------------------------------------------------------------------


def test_vocabulary_is_the_originals(original):
    vocab, merges = load_openai_bpe()
    assert vocab == original.encoder
    assert merges == sorted(original.bpe_ranks, key=original.bpe_ranks.get)
    assert byte_alphabet() == list(bytes_to_unicode().values())
    assert set(byte_alphabet()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"], len(vocab)) == (49406, 49407, 49408)


def test_normalizer_lowercases_ascii_and_composes():
    normalizer = build_normalizer()
    assert normalizer.normalize_str("A Photo\tOF 2 Cats!") == "a photo\tof 2 cats!"
    assert normalizer.normalize_str("Cafe\u0301") == "caf\u00e9"


def test_pre_tokenizer_splits_like_clip(original):
    pre_tokenizer = build_pre_tokenizer()
    text = "it's a cat!!  don't\t2023 ''s <|endoftext|> x"
    pieces = [piece for piece, _ in pre_tokenizer.pre_tokenize_str(text)]
    assert pieces == original.pat.findall(text)


def test_model_encodes_a_word_with_end_of_word_suffix(original):
    vocab, merges = load_openai_bpe()
    model = build_model(vocab, merges)
    for word in ["photo", "supercalifragilistic", "!!", "x"]:
        assert [t.value for t in model.tokenize(word)] == original.bpe(word).split(" ")


def test_decoder_restores_bytes_and_word_ends(original):
    ids = original.encode("a caf\u00e9 \u732b!")
    tokens = [original.decoder[i] for i in ids]
    assert build_decoder().decode(tokens) == original.decode(ids)


def test_python_cleaning_steps_are_clips():
    text = " Tom &amp;amp; \u201cJerry\u201d \ufb01sh\n\nOK "
    assert clean_text(text) == " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()
    assert split_words(text) == ["tom", "&", '"', "jerry", '"', "fish", "ok"]


# ---- routing: when Python cleaning may be skipped ----------------------------------------------------------------

FAST_ALPHABET = list("\t\n\x0c\r aZ1'&<|;#x!.s")


@pytest.mark.parametrize("length", [1, 2, 3])
def test_fast_path_claim_exhaustive_short_strings(length):
    """Wherever needs_python_cleaning is False, the ASCII split gives CLIP's words (ftfy, html, lower, regex)."""
    for chars in itertools.product(FAST_ALPHABET, repeat=length):
        text = "".join(chars)
        if not needs_python_cleaning(text):
            assert fast_words(text) == split_words(text), repr(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=40))
def test_fast_path_claim_on_ascii(text):
    if not needs_python_cleaning(text):
        assert fast_words(text) == split_words(text)


def test_routing_sends_what_needs_cleaning_to_python():
    for text in ["caf\u00e9", "&amp;", "a&b", "&#39;", "x\x00y", "\x1b[0m", "<|endoftext|>", "a\x7f", "&\r"]:
        assert needs_python_cleaning(text), repr(text)
    for text in ["a photo", "R & D", "a &", "&& <&", "it's\r\n2", "x < y | z"]:
        assert not needs_python_cleaning(text), repr(text)


# ---- ids against the original --------------------------------------------------------------------------------------


def test_batch_ids_match_original(tok, original):
    assert tok(CORPUS, add_special_tokens=False)["input_ids"] == [original.encode(t) for t in CORPUS]


def test_single_string_ids_match_original(tok, original):
    """Single strings take the `tokenizers.Encoding` path (Rust pipeline or Python-split words)."""
    for text in CORPUS:
        assert tok(text, add_special_tokens=False)["input_ids"] == original.encode(text), repr(text[:60])


def test_encodings_path_batch_matches_original(tok, original):
    out = tok(CORPUS, add_special_tokens=False, return_encodings=True)
    assert out.encodings is not None
    assert out["input_ids"] == [original.encode(t) for t in CORPUS]


@pytest.mark.parametrize("return_encodings", [False, True])
def test_padded_tensors_match_clip_tokenize(tok, return_encodings):
    out = tok(
        CORPUS, padding="max_length", max_length=77, truncation=True, return_tensors="pt",
        return_encodings=return_encodings,
    )
    expected = clip_padded(CORPUS, truncate=True)
    assert torch.equal(out["input_ids"], expected)
    assert out["input_ids"].dtype == torch.long
    lengths = [min(len(ORIGINAL.encode(t)) + 2, 77) for t in CORPUS]
    assert torch.equal(out["attention_mask"], (torch.arange(77)[None, :] < torch.tensor(lengths)[:, None]).long())


def test_padded_tensors_without_truncation_match_clip_tokenize(tok):
    short = [t for t in CORPUS if len(ORIGINAL.encode(t)) <= 75]
    assert torch.equal(tok(short, padding="max_length", return_tensors="pt")["input_ids"], clip_padded(short, False))
    single = tok(short[0], padding="max_length", return_tensors="pt")["input_ids"]
    assert torch.equal(single, clip_padded(short[:1], False))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=40), min_size=1, max_size=6))
def test_arbitrary_unicode_matches_original(tok, texts):
    expected = [ORIGINAL.encode(t) for t in texts]
    assert tok(texts, add_special_tokens=False)["input_ids"] == expected
    assert tok(texts[0], add_special_tokens=False)["input_ids"] == expected[0]
    padded = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(padded, clip_padded(texts).numpy())


FRAGMENTS = [
    "a", "S", "t", "1", " ", "'", "!", ".", "&", ";", "#", "x", "amp", "lt", "<", "|", "<|", "|>", "endoftext",
    "startoftext", "<|endoftext|>", "\t", "\r\n", "\x00", "\x1c", "\u00e9", "\u201c", "\ufb01", "\uff21",
    "\u00c3\u00a9", "&amp;", "&#39;", "&#x41",
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join), min_size=1, max_size=6))
def test_clip_relevant_fragments_match_original(tok, texts):
    """Fragments that keep hitting contractions, entities, special-token strings and the routing rules."""
    assert tok(texts, add_special_tokens=False)["input_ids"] == [ORIGINAL.encode(t) for t in texts]


# ---- padding, truncation, both paths agree -------------------------------------------------------------------------


def test_pad_conventions():
    texts = ["a cat", "a photo of a dog on a mat"]
    zero = DualClipTokenizer()(texts, padding="max_length", return_tensors="pt")
    eos = DualClipTokenizer(pad_token="<|endoftext|>")(texts, padding="max_length", return_tensors="pt")
    assert zero["input_ids"].shape == eos["input_ids"].shape == (2, 77)
    assert torch.equal(zero["attention_mask"], eos["attention_mask"])
    real = zero["attention_mask"].bool()
    assert torch.equal(zero["input_ids"][real], eos["input_ids"][real])
    assert set(zero["input_ids"][~real].tolist()) == {0}
    assert set(eos["input_ids"][~real].tolist()) == {49407}


def test_special_token_ids_and_lengths(tok):
    assert (tok.bos_token, tok.bos_token_id) == ("<|startoftext|>", 49406)
    assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", 49407)
    assert (tok.unk_token_id, tok.pad_token, tok.pad_token_id) == (49407, "!", 0)
    assert tok.model_max_length == 77
    assert len(tok) == tok.vocab_size == 49408


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"add_special_tokens": False},
        {"padding": True},
        {"padding": True, "padding_side": "left"},
        {"padding": "max_length", "max_length": 20, "truncation": True},
        {"padding": "max_length", "max_length": 20, "truncation": True, "padding_side": "left"},
        {"padding": True, "pad_to_multiple_of": 8},
        {"truncation": True, "max_length": 5},
        {"truncation": True, "max_length": 2},
        {"truncation": "only_first", "max_length": 6, "padding": "longest", "return_tensors": "np"},
        {"padding": "max_length", "max_length": 10},  # rows longer than 10 stay longer
        {"padding": True, "return_tensors": "pt", "return_attention_mask": False},
    ],
)
@pytest.mark.parametrize("truncation_side", ["right", "left"])
def test_fast_layout_agrees_with_encodings(options, truncation_side):
    """The numpy layout (batches) and the `tokenizers` encodings give the same outputs for every option."""
    tok = DualClipTokenizer(truncation_side=truncation_side)
    texts = ["a", "", "the quick brown fox jumps over the lazy dog", "caf\u00e9 &amp; \u201cbar\u201d", "x!?" * 7]
    fast = tok(texts, **options)
    full = tok(texts, return_encodings=True, **options)
    assert fast.encodings is None and full.encodings is not None
    assert fast.keys() == full.keys()
    for key in fast:
        assert type(fast[key]) is type(full[key]), key
        as_list = (lambda v: v.tolist()) if options.get("return_tensors") else (lambda v: v)
        assert as_list(fast[key]) == as_list(full[key]), key


def test_ragged_tensors_raise_a_clear_error(tok):
    with pytest.raises(ValueError, match="padding"):
        tok(["a", "a b c"], return_tensors="pt")


def test_pairs_offsets_and_tokens(tok):
    out = tok(["a photo", "caf\u00e9 &amp; bar"], ["of a cat", "two"], return_offsets_mapping=True)
    assert out["input_ids"][0] == [49406, *ORIGINAL.encode("a photo"), 49407, 49406, *ORIGINAL.encode("of a cat"), 49407]
    assert out["input_ids"][1][1:-1] == [*ORIGINAL.encode("caf\u00e9 &amp; bar"), 49407, 49406, *ORIGINAL.encode("two")]
    assert len(out["offset_mapping"][0]) == len(out["input_ids"][0])
    assert tok.tokenize("A Photo!!") == [ORIGINAL.decoder[i] for i in ORIGINAL.encode("A Photo!!")]
    assert tok("caf\u00e9").tokens() == ["<|startoftext|>", *[ORIGINAL.decoder[i] for i in ORIGINAL.encode("caf\u00e9")], "<|endoftext|>"]


def test_overflowing_tokens(tok):
    text = " ".join(["word"] * 100)
    out = tok(text, truncation=True, max_length=77, return_overflowing_tokens=True)
    assert out["input_ids"][0] == clip_padded([text])[0].tolist()
    assert len(out["input_ids"]) == 2


# ---- decoding -------------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=49405), max_size=30))
def test_decode_matches_original_on_any_ids(tok, ids):
    assert tok.decode(ids) == ORIGINAL.decode(ids)


def test_decode_with_special_tokens(tok, original):
    row = clip_padded(["Hello, World!? caf\u00e9"])[0].tolist()
    content = row[1 : row.index(49407)]
    with_specials = [49406, *content, 49407]
    assert tok.decode(with_specials) == original.decode(with_specials)
    assert tok.decode(row, skip_special_tokens=True) == original.decode(content)
    assert "!" in tok.decode(row, skip_special_tokens=True)  # the id-0 "!" inside the text stays
    assert tok.batch_decode(torch.tensor([row, row])) == [original.decode(row)] * 2
    eos_padded = DualClipTokenizer(pad_token="<|endoftext|>")("a cat", padding="max_length")["input_ids"]
    assert tok.decode(eos_padded, skip_special_tokens=True) == original.decode(original.encode("a cat"))


# ---- added tokens, saving and loading -------------------------------------------------------------------------------


def test_added_tokens():
    tok = DualClipTokenizer()
    assert tok.add_tokens(["!"]) == 0 and tok.add_tokens(["photo</w>"]) == 0
    assert tok.add_tokens(["<cat-toy>"]) == 1
    new_id = tok.convert_tokens_to_ids("<cat-toy>")
    assert new_id == 49408
    texts = ["a photo of <cat-toy>!", "a \u201cphoto\u201d of <CAT-TOY>", "<cat-toy><cat-toy>", "a photo!"]
    expected = [
        [*ORIGINAL.encode("a photo of"), new_id, *ORIGINAL.encode("!")],
        [*ORIGINAL.encode("a \u201cphoto\u201d of"), new_id],
        [new_id, new_id],
        ORIGINAL.encode("a photo!"),
    ]
    assert tok(texts, add_special_tokens=False)["input_ids"] == expected
    assert [tok(t, add_special_tokens=False)["input_ids"] for t in texts] == expected


def test_save_and_load_round_trip(tmp_path):
    from transformers import AutoTokenizer, CLIPTokenizer

    from dualclip import DualClipConfig

    tok = DualClipTokenizer(pad_token="<|endoftext|>")
    tok.add_tokens(["<cat-toy>"])
    tok.save_pretrained(tmp_path)
    texts = ["a photo of <cat-toy>", "Tom &amp; \u201cJerry\u201d", "plain text"]
    options = dict(padding="max_length", truncation=True, return_tensors="pt")
    expected = tok(texts, **options)["input_ids"]

    loaded = DualClipTokenizer.from_pretrained(tmp_path)
    assert (loaded.pad_token, loaded.model_max_length, len(loaded)) == ("<|endoftext|>", 77, 49409)
    assert torch.equal(loaded(texts, **options)["input_ids"], expected)

    AutoTokenizer.register(DualClipConfig, tokenizer_class=DualClipTokenizer, exist_ok=True)
    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert type(auto) is DualClipTokenizer
    assert torch.equal(auto(texts, **options)["input_ids"], expected)

    # What trust_remote_code loading does: build from tokenizer.json alone.
    from_file = DualClipTokenizer(tokenizer_file=str(tmp_path / "tokenizer.json"), pad_token="<|endoftext|>")
    assert torch.equal(from_file(texts, **options)["input_ids"], expected)

    # The folder stays readable by stock tools, exact on plain ASCII text.
    plain = "A photo of a cat, sleeping!"
    ids = [49406, *ORIGINAL.encode(plain), 49407]
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(plain).ids == ids
    assert CLIPTokenizer.from_pretrained(tmp_path)(plain)["input_ids"] == ids


def test_folder_loads_with_remote_code_without_the_package(tmp_path, monkeypatch):
    """The module is self-contained: a folder saved with auto_map loads where dualclip is not importable."""
    monkeypatch.setattr(DualClipTokenizer, "_auto_class", "AutoTokenizer")  # what register_for_auto_class sets
    tok = DualClipTokenizer()
    tok.add_tokens(["<cat-toy>"])
    tok.save_pretrained(tmp_path / "folder")
    texts = ["a \u201cphoto\u201d of <cat-toy>", "plain &amp; simple"]
    script = "\n".join(
        [
            "import json, sys",
            "sys.modules['dualclip'] = None",
            "from transformers import AutoTokenizer",
            f"tok = AutoTokenizer.from_pretrained({str(tmp_path / 'folder')!r}, trust_remote_code=True)",
            "assert type(tok).__module__.startswith('transformers_modules'), type(tok).__module__",
            f"print(json.dumps(tok({texts!r})['input_ids']))",
        ]
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == tok(texts)["input_ids"]


def test_vocabulary_files_load(tmp_path, tok):
    files = tok.save_vocabulary(str(tmp_path))
    assert sorted(os.path.basename(f) for f in files) == ["merges.txt", "vocab.json"]
    from_files = DualClipTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    assert from_files(CORPUS[:8])["input_ids"] == tok(CORPUS[:8])["input_ids"]


def test_piece_cache_starts_over_when_full(monkeypatch, original):
    import dualclip.tokenization_dualclip as module

    monkeypatch.setattr(module, "_PIECE_CACHE_LIMIT", 20)
    tok = DualClipTokenizer()
    for start in range(0, len(PROSE), 2):
        batch = PROSE[start : start + 2] + ["caf\u00e9 au lait"]
        assert tok(batch, add_special_tokens=False)["input_ids"] == [original.encode(t) for t in batch]
    assert len(tok._pieces.rows) < 200


def test_pickle_round_trip(tok):
    tok(CORPUS)  # fill the caches
    copy = pickle.loads(pickle.dumps(tok))
    assert copy(CORPUS)["input_ids"] == tok(CORPUS)["input_ids"]


# ---- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (123, TypeError, "text must be a str or a list of str, got int"),
        (b"bytes", TypeError, "got bytes"),
        (["a", 1], TypeError, r"got int at text\[1\]"),
        (["a", None], TypeError, r"got NoneType at text\[1\]"),
        ([["a", "b"]], TypeError, "nested lists are not supported"),
        ([], ValueError, "empty list"),
    ],
)
def test_bad_text_raises_clear_errors(tok, bad, error, message):
    with pytest.raises(error, match=message):
        tok(bad)


def test_other_bad_arguments(tok):
    with pytest.raises(ValueError, match="text"):
        tok(None)
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(None)
    with pytest.raises(ValueError, match="return_tensors must be one of"):
        tok(["a"], return_tensors="tensorflow-ish")
    with pytest.raises(ValueError, match="text_pair must match text"):
        tok(["a", "b"], ["c"])
    with pytest.raises(TypeError, match="text_pair must be a str"):
        tok("a", 5)
    with pytest.raises(NotImplementedError, match="is_split_into_words"):
        tok(["a", "b"], is_split_into_words=True)
    with pytest.raises(NotImplementedError, match="split_special_tokens"):
        tok("a", split_special_tokens=True)

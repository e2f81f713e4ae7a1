"""syntax="a1111": AUTOMATIC1111's parser, chunker and emphasis, checked against expectations derived by hand from
A1111's rules (its code cannot be a dependency). Each row names the rule it checks. Weights are compared exactly:
they are written as the products A1111 forms, in the order it forms them (inner groups close first, groups left
open at the end multiply last: round ones, then square ones)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tiny_diffusion as tiny
from tiny_diffusion import WORDS, tok, tok_2  # noqa: F401  (pytest fixtures)
from dualclip import DualClipTextModel, DualClipTextModelWithProjection
from dualclip.conditioning import PromptEncoder, tokenize_prompt
from dualclip.conditioning_a1111 import chunk_a1111, emphasize, is_break, parse_a1111, prepare_prompt

R, S = 1.1, 1 / 1.1
BRK = ("BREAK", -1.0)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    yield from tiny.one_torch_thread()


# ---- parse_a1111 -----------------------------------------------------------------------------------------------------

PARSE_TABLE = [
    # (prompt, expected, rule)
    ("normal text", [("normal text", 1.0)], "plain text has weight 1 (A1111 doctest)"),
    ("an (important) word", [("an ", 1.0), ("important", R), (" word", 1.0)], "(x) multiplies by 1.1 (doctest)"),
    ("(unbalanced", [("unbalanced", R)], "an unclosed ( weights the rest of the prompt (doctest)"),
    (r"\(literal\]", [("(literal]", 1.0)], "\\( \\) \\[ \\] are literal characters (doctest)"),
    ("(unnecessary)(parens)", [("unnecessaryparens", R)], "adjacent equal weights merge into one fragment (doctest)"),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [("a ", 1.0), ("house", 1.3 * R * R), (" ", R), ("on", S * R), (" a ", R), ("hill", 0.5 * R),
         (", sun, ", R), ("sky", R * R * R * R), (".", R)],
        "A1111's own doctest prompt: one of the three ( stays open and multiplies everything after it by 1.1",
    ),
    ("[cat]", [("cat", S)], "[x] multiplies by 1/1.1"),
    ("((cat))", [("cat", R * R)], "groups nest and multiply"),
    ("(cat:1.5)", [("cat", 1.5)], "(x:w) multiplies by w"),
    ("((cat:1.5))", [("cat", 1.5 * R)], "inner weighted group first, then the outer 1.1"),
    ("(cat:+.5)", [("cat", 0.5)], "the number may carry a sign and start with a dot"),
    ("(cat:-1)", [("cat", -1.0)], "negative weights are allowed"),
    ("(cat:0)", [("cat", 0.0)], "a zero weight is allowed"),
    ("(a:1.5:2)", [("a:1.5", 2.0)], "only the ':w)' that closes the group is a weight; an earlier ':1.5' is text"),
    ("(cat: 1.5)", [("cat: 1.5", R)], "the number must follow ':' directly, else ':' and the number are text"),
    ("(cat:1.5 )", [("cat:1.5 ", R)], "no space allowed before ')' either"),
    ("(cat:1e3)", [("cat:1e3", R)], "exponents are not part of A1111's number"),
    ("(cat:1.5", [("cat:1.5", R)], "an unclosed weighted group is text under an open (, x1.1"),
    ("a:1.2.3) b", [("a:1.2.3) b", 1.0)], "':w)' with no open ( is text, even when w is malformed"),
    ("[cat:1.5]", [("cat:1.5", S)], "square brackets take no weight: ':' and the number are text"),
    ("[a (b] c)", [("a ", S), ("b", S * R), (" c", R)], "round and square groups keep separate stacks and may cross"),
    ("(a [b) c]", [("a ", R), ("b", R * S), (" c", S)], "crossing the other way"),
    ("((a)", [("a", R * R)], "the inner ( closes; the outer one stays open and weights the rest"),
    ("(a))", [("a", R), (")", 1.0)], "a ) with nothing open is text"),
    ("a] b", [("a] b", 1.0)], "a ] with nothing open is text, merged with its neighbours"),
    ("[a", [("a", S)], "an unclosed [ weights the rest by 1/1.1"),
    ("(a [b", [("a ", R), ("b", R * S)], "at the end open round groups apply first, then square ones"),
    ("[a (b", [("a ", S), ("b", R * S)], "same order when the square group opened first"),
    ("x()y", [("xy", 1.0)], "an empty group weights nothing; the text around it merges"),
    ("()", [("", 1.0)], "a prompt with no text is one empty fragment"),
    ("", [("", 1.0)], "the empty prompt is one empty fragment"),
    (r"a\\b", [("a\\b", 1.0)], "\\\\ is a literal backslash"),
    (r"a\b", [("ab", 1.0)], "a backslash escaping nothing is dropped"),
    (r"a\ b", [("a b", 1.0)], "... before a space too"),
    (r"(a)\(b)", [("a", R), ("(b)", 1.0)], "an escaped ( opens nothing, so the final ) is text"),
    (r"(a\)", [("a)", R)], "an escaped ) closes nothing: the ( stays open"),
    ("a BREAK b", [("a", 1.0), BRK, ("b", 1.0)], "BREAK, with the spaces around it, becomes a break marker"),
    ("BREAK", [("", 1.0), BRK, ("", 1.0)], "a BREAK alone: empty text on both sides"),
    ("aBREAK b break", [("aBREAK b break", 1.0)], "BREAK must be a whole word and upper case"),
    ("a,BREAK,b", [("a,", 1.0), BRK, (",b", 1.0)], "punctuation is a word boundary"),
    ("a:BREAK", [("a:", 1.0), BRK, ("", 1.0)], "':' is a separate text item, so BREAK starts a new run"),
    ("(a BREAK b)", [("a", R), ("BREAK", -1.0 * R), ("b", R)],
     "inside a group the marker's weight is multiplied too: -1.1 is not a break but the text 'BREAK'"),
    ("(a BREAK b:0)", [("aBREAKb", 0.0)], "weight 0 makes the marker -0.0 == 0.0: merged with its neighbours"),
]


@pytest.mark.parametrize("prompt, expected, rule", PARSE_TABLE, ids=[row[2][:60] for row in PARSE_TABLE])
def test_parse_table(prompt, expected, rule):
    result = parse_a1111(prompt)
    assert result == expected, rule
    assert all(type(w) is float for _, w in result)


def test_doctest_numbers_are_a1111s():
    """The weights A1111's doctest prints, digit for digit."""
    weights = dict(parse_a1111("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."))
    assert weights["house"] == 1.5730000000000004 and weights["hill"] == 0.55
    assert weights["sky"] == 1.4641000000000006 and weights["on"] == 1.0


@pytest.mark.parametrize("prompt", ["(a:1.2.3)", "(a:.)", "(a:..5)", "x (a:1.)(b:1..)"])
def test_malformed_weight_fails_as_in_a1111(prompt):
    """A run of digits and dots that is not a number, closing an open group: A1111's float() raises."""
    with pytest.raises(ValueError, match="malformed attention weight"):
        parse_a1111(prompt)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="()[]\\: .12abBREAK", max_size=40))
def test_parse_keeps_every_letter(text):
    """Brackets, escapes and weights only ever remove syntax: every letter survives, except those of BREAK markers.
    The one error is a malformed number closing a group, as in A1111."""
    try:
        fragments = parse_a1111(text)
    except ValueError as error:
        assert "malformed" in str(error)
        return
    markers = sum(is_break(t, w) for t, w in fragments)
    kept = "".join(t for t, w in fragments if not is_break(t, w))
    assert sum(c in "abBREAK" for c in kept) == sum(c in "abBREAK" for c in text) - 5 * markers
    assert all(fragments[i][1] != fragments[i + 1][1] for i in range(len(fragments) - 1))  # equal weights merged


# ---- what reaches the parser -----------------------------------------------------------------------------------------


def test_prepare_prompt_strips_extra_networks_from_positive_prompts_only():
    with pytest.warns(UserWarning, match="lora:detail:0.8"):
        assert prepare_prompt("a cat <lora:detail:0.8>, sunny") == "a cat , sunny"
    assert prepare_prompt("a cat <lora:detail:0.8>", negative=True) == "a cat <lora:detail:0.8>"
    assert prepare_prompt("a <not a tag> cat") == "a <not a tag> cat"  # a space: \w+ does not match


@pytest.mark.parametrize("prompt", ["a cat AND a dog", "a cat:1.5", "a cat: 2", "[cat:dog:0.5]", "[cat:10]",
                                    "a [cat|dog]", "[cat: dog: .5]", "a cat\n:1.5"])
def test_sampler_features_are_refused(prompt):
    """AND and a trailing ':w' are composable diffusion; [a:b:w] and [a|b] change the prompt per step."""
    with pytest.raises(ValueError, match="AND|composable|prompt editing"):
        prepare_prompt(prompt)


@pytest.mark.parametrize("prompt, expected", [
    ("a cat:1", "a cat"),  # a composable weight of 1 changes nothing: A1111 drops it from the text
    ("a cat :1.0  ", "a cat"),
    ("a cat\nsunny:1.5", "a cat\nsunny:1.5"),  # A1111's pattern cannot cross the newline: no weight, text kept
    ("ANDROID android", "ANDROID android"),  # AND must be a whole word
    (r"\[cat:1.5\]", r"\[cat:1.5\]"),  # escaped brackets schedule nothing
    ("(cat:1.5)", "(cat:1.5)"),
])
def test_prepare_prompt_keeps_ordinary_prompts(prompt, expected):
    assert prepare_prompt(prompt) == expected


def test_negative_prompts_are_not_split_on_and():
    assert prepare_prompt("black AND white", negative=True) == "black AND white"
    with pytest.raises(ValueError, match="prompt editing"):
        prepare_prompt("[cat:dog:0.5]", negative=True)


# ---- chunking --------------------------------------------------------------------------------------------------------


def words(tokenizer, count: int, seed: int = 0) -> list[str]:
    """`count` one-token words (checked against the tokenizer)."""
    generator = torch.Generator().manual_seed(seed)
    picked = [WORDS[i] for i in torch.randint(len(WORDS), (count,), generator=generator).tolist()]
    assert len(tokenizer(" ".join(picked), add_special_tokens=False)["input_ids"]) == count
    return picked


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def row(tokenizer, ids: list[int]) -> list[int]:
    """`[BOS] ids [EOS] [pad...]` of 77, written out independently of the code under test."""
    out = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    return out + [tokenizer.pad_token_id] * (77 - len(out))


def chunk_ids(tokenizer, prompt: str, **options) -> list[list[int]]:
    ids, _ = tokenize_prompt(prompt, tokenizer, **options)
    return ids.tolist()


def test_chunk_sizes(tok):
    """75 tokens fill one chunk; the 76th opens a second; the empty prompt is one empty chunk."""
    for count, chunks in [(0, 1), (1, 1), (75, 1), (76, 2), (150, 2), (151, 3)]:
        text = " ".join(words(tok, count)) if count else ""
        assert len(chunk_ids(tok, text)) == chunks, count


def test_chunk_rows_are_bos_tokens_eos_padding(tok, tok_2):
    """Each row is [BOS] tokens [EOS] then the tokenizer's pad (EOS for SD-1, '!' for SD-2 / SDXL's second)."""
    text = " ".join(words(tok, 80))
    for tokenizer in (tok, tok_2):
        all_ids = ids_of(tokenizer, text)
        assert chunk_ids(tokenizer, text) == [row(tokenizer, all_ids[:75]), row(tokenizer, all_ids[75:])]


# Each case: (number of words before the comma, number after, backtrack setting) -> tokens in the first chunk.
BACKTRACK_TABLE = [
    (60, 20, 20, 61, "comma at index 60: 75 - 60 = 15 <= 20, the 14 words after it move to the next chunk"),
    (55, 25, 20, 56, "comma at index 55: 75 - 55 = 20 <= 20 (the limit is inclusive): moved"),
    (54, 26, 20, 75, "comma at index 54: 75 - 54 = 21 > 20: the chunk is cut at 75 tokens"),
    (50, 30, 25, 51, "a larger setting reaches further back"),
    (60, 20, 0, 75, "0 disables backtracking"),
    (60, 14, 20, 75, "a prompt that fits in 75 tokens is never cut"),
]


@pytest.mark.parametrize("before, after, backtrack, first, rule", BACKTRACK_TABLE,
                         ids=[row[4][:50] for row in BACKTRACK_TABLE])
def test_comma_backtracking(tok, before, after, backtrack, first, rule):
    head, tail = words(tok, before), words(tok, after, seed=1)
    text = " ".join(head) + ", " + " ".join(tail)
    all_ids = ids_of(tok, text)
    assert len(all_ids) == before + 1 + after
    expected = [row(tok, all_ids[:first])]
    rest = all_ids[first:]
    while rest:
        expected.append(row(tok, rest[:75]))
        rest = rest[75:]
    assert chunk_ids(tok, text, comma_backtrack=backtrack) == expected, rule


def test_a_comma_as_the_next_token_is_not_moved_back(tok):
    """When the token arriving at a full chunk is itself a comma, the chunk is cut at 75 and the comma opens the
    next chunk (the backtracking rule only applies to a non-comma token)."""
    text = " ".join(words(tok, 60)) + ", " + " ".join(words(tok, 14, seed=1)) + ", " + " ".join(words(tok, 5, 2))
    all_ids = ids_of(tok, text)
    assert chunk_ids(tok, text) == [row(tok, all_ids[:75]), row(tok, all_ids[75:])]
    assert all_ids[75] == ids_of(tok, ",")[0]


def test_backtracking_moves_weights_with_their_tokens(tok):
    text = " ".join(words(tok, 60)) + ", (" + " ".join(words(tok, 20, seed=1)) + ":1.5)"
    ids, weights = tokenize_prompt(text, tok)
    assert ids.shape[0] == 2
    assert weights[0].tolist() == [1.0] * 77  # 60 words and the comma, weight 1
    assert weights[1, 1:21].tolist() == [1.5] * 20 and weights[1, 21:].tolist() == [1.0] * 56


BREAK_TABLE = [
    ("cat BREAK dog", [["cat"], ["dog"]], "BREAK closes the chunk"),
    ("cat BREAK", [["cat"]], "a BREAK at the end adds no chunk"),
    ("BREAK dog", [[], ["dog"]], "a BREAK at the start closes an empty chunk"),
    ("cat BREAK BREAK dog", [["cat"], [], ["dog"]], "two BREAKs close an empty chunk between them"),
    ("(cat BREAK dog)", [["cat", "break", "dog"]], "a BREAK whose weight brackets changed is the word 'break'"),
]


@pytest.mark.parametrize("prompt, pieces, rule", BREAK_TABLE, ids=[row[2] for row in BREAK_TABLE])
def test_break_table(tok, prompt, pieces, rule):
    expected = [row(tok, [i for word in piece for i in ids_of(tok, word)]) for piece in pieces]
    assert chunk_ids(tok, prompt) == expected, rule


def test_break_restarts_the_count(tok):
    text = " ".join(words(tok, 70)) + " BREAK " + " ".join(words(tok, 10, seed=1))
    ids = chunk_ids(tok, text)
    assert len(ids) == 2 and ids[1].index(tok.eos_token_id) == 11


def test_emphasis_none_parses_nothing(tok):
    """With emphasis "None" A1111 tokenizes the prompt as it stands: brackets are text, BREAK is a word."""
    prompt = "(cat:1.5) BREAK [dog]"
    ids, weights = tokenize_prompt(prompt, tok, emphasis="None")
    assert ids.tolist() == [row(tok, ids_of(tok, prompt))] and bool((weights == 1).all())
    ignore_ids, ignore_weights = tokenize_prompt(prompt, tok, emphasis="Ignore")  # parsed; weights ignored later
    assert ignore_ids.shape[0] == 2 and float(ignore_weights.max()) == 1.5


def test_textual_inversion_vectors_stay_in_one_chunk():
    """A multi-vector embedding that does not fit in the current chunk moves whole to the next one."""
    tokenizer = tiny.tokenizer(tiny.EOS_TOKEN)
    tokenizer.add_tokens(["<concept>", "<concept>_1", "<concept>_2"])
    concept = tokenizer.convert_tokens_to_ids(["<concept>", "<concept>_1", "<concept>_2"])
    head = words(tokenizer, 73)
    ids = chunk_ids(tokenizer, " ".join(head) + " <concept> cat")
    assert ids == [row(tokenizer, ids_of(tokenizer, " ".join(head))),
                   row(tokenizer, concept + ids_of(tokenizer, "cat"))]
    fits = chunk_ids(tokenizer, " ".join(head[:72]) + " <concept>")
    assert fits == [row(tokenizer, ids_of(tokenizer, " ".join(head[:72])) + concept)]


def test_chunker_takes_other_lengths(tok):
    ids, _ = chunk_a1111([("a b c d e", 1.0)], tok, chunk_length=3, comma_backtrack=0)
    assert ids.shape == (2, 5)


# ---- emphasis --------------------------------------------------------------------------------------------------------


def test_emphasis_modes_against_the_formulas():
    hidden = torch.randn(3, 77, 8, generator=torch.Generator().manual_seed(0))
    weights = torch.ones(3, 77)
    weights[0, 3:6] = 1.5
    weights[2, 10] = 0.5
    z, w = hidden.double(), weights.double()[..., None]
    original = torch.stack([(z[i] * w[i]) * (z[i].mean() / (z[i] * w[i]).mean()) for i in range(3)])
    torch.testing.assert_close(emphasize(hidden, weights, "Original").double(), original, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(emphasize(hidden, weights, "No norm").double(), z * w, atol=1e-6, rtol=1e-6)
    assert emphasize(hidden, weights, "Ignore") is hidden and emphasize(hidden, weights, "None") is hidden
    # a chunk with all weights 1 comes back bit for bit (ratio of equal means is exactly 1)
    assert torch.equal(emphasize(hidden, weights, "Original")[1], hidden[1])
    with pytest.raises(ValueError, match="emphasis"):
        emphasize(hidden, weights, "Bogus")


# ---- encoding --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tiny.save_stock_text_encoders(str(tmp_path_factory.mktemp("stock")))


def with_trained_looking_norms(model, seed: int):
    """Random LayerNorm scales and offsets. Freshly initialised norms (scale 1, offset 0) make every token's states
    average to ~0, and "Original" emphasis divides by that mean; trained encoders are nowhere near it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.3 + 0.2 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def encoders(folders):
    return (with_trained_looking_norms(DualClipTextModel.from_pretrained(folders["text_encoder"]), 1),
            with_trained_looking_norms(DualClipTextModelWithProjection.from_pretrained(folders["text_encoder_2"]), 2))


def hidden_states(encoder, rows, layer=None, norm=False):
    """All hidden states of the given rows, encoded one row at a time."""
    out = []
    with torch.no_grad():
        for r in rows:
            o = encoder(torch.tensor([r]), output_hidden_states=True)
            h = o.last_hidden_state if layer is None else o.hidden_states[layer]
            if norm:
                h = encoder.text_model.final_layer_norm(h)
            out.append(h[0])
    return torch.stack(out)


def a1111_reference(encoder, tokenizer, prompt, emphasis="Original", layer=None, norm=False):
    """A1111's computation written out: chunks (checked above) encoded one at a time, emphasis per chunk."""
    ids, weights = tokenize_prompt(prompt, tokenizer, emphasis=emphasis)
    z = hidden_states(encoder, ids.tolist(), layer, norm)
    out = []
    for zc, wc in zip(z, weights):
        weighted = zc * wc[:, None]
        if emphasis == "Original":
            weighted = weighted * (zc.mean() / weighted.mean())
        out.append(weighted if emphasis in ("Original", "No norm") else zc)
    return torch.cat(out)


PROMPT = "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))). " + " ".join(WORDS * 4) + ", (night sky:1.2)"


@pytest.mark.parametrize("emphasis", ["Original", "No norm", "Ignore", "None"])
def test_sd1_encoding_is_a1111s_computation(encoders, tok, emphasis):
    result = PromptEncoder(tok, encoders[0], emphasis=emphasis).encode(PROMPT, negative_prompt="lowres")
    expected = a1111_reference(encoders[0], tok, PROMPT, emphasis)
    assert expected.shape[0] == 2 * 77 and bool(torch.isfinite(expected).all())
    torch.testing.assert_close(result["prompt_embeds"][0], expected, atol=1e-6, rtol=1e-6)
    # the negative prompt is one chunk; A1111's "pad prompt/negative prompt" adds the empty prompt's embedding
    negative = result["negative_prompt_embeds"][0]
    torch.testing.assert_close(negative[:77], a1111_reference(encoders[0], tok, "lowres"), atol=1e-6, rtol=0)
    torch.testing.assert_close(negative[77:], a1111_reference(encoders[0], tok, ""), atol=1e-6, rtol=0)


def test_a1111_clip_skip_numbering(encoders, tok):
    """"Clip skip: 2" = diffusers' clip_skip=1: layer -2 through the final LayerNorm; "Clip skip: 1" = none."""
    prompt = "a (red:1.2) car"
    skip2 = PromptEncoder(tok, encoders[0], a1111_clip_skip=2).encode(prompt)["prompt_embeds"][0]
    torch.testing.assert_close(skip2, a1111_reference(encoders[0], tok, prompt, layer=-2, norm=True),
                               atol=1e-6, rtol=1e-6)
    diffusers_1 = PromptEncoder(tok, encoders[0], clip_skip=1).encode(prompt)["prompt_embeds"][0]
    assert torch.equal(skip2, diffusers_1)
    skip1 = PromptEncoder(tok, encoders[0], a1111_clip_skip=1).encode(prompt)["prompt_embeds"]
    assert torch.equal(skip1, PromptEncoder(tok, encoders[0]).encode(prompt)["prompt_embeds"])
    with pytest.raises(ValueError, match="not both"):
        PromptEncoder(tok, encoders[0], clip_skip=1, a1111_clip_skip=2)
    with pytest.raises(ValueError, match="a1111_clip_skip"):
        PromptEncoder(tok, encoders[0], a1111_clip_skip=0)


def test_a1111_clip_skip_is_ignored_on_sd2(encoders, tok_2):
    with pytest.warns(UserWarning, match="SD-2"):
        encoder = PromptEncoder(tok_2, encoders[0], convention="sd2", a1111_clip_skip=2)
    assert torch.equal(encoder.encode("a cat")["prompt_embeds"],
                       PromptEncoder(tok_2, encoders[0], convention="sd2").encode("a cat")["prompt_embeds"])


def test_sdxl_two_encoders_emphasis_each_and_pooled_from_first_chunk(encoders, tok, tok_2):
    result = PromptEncoder([tok, tok_2], list(encoders), convention="sdxl").encode(PROMPT, negative_prompt="lowres")
    expected = torch.cat([a1111_reference(encoders[0], tok, PROMPT, layer=-2),
                          a1111_reference(encoders[1], tok_2, PROMPT, layer=-2)], dim=-1)
    torch.testing.assert_close(result["prompt_embeds"][0], expected, atol=1e-6, rtol=1e-6)
    first_chunk = tokenize_prompt(PROMPT, tok_2)[0][:1]
    with torch.no_grad():
        pooled = encoders[1](first_chunk).text_embeds  # unweighted: emphasis touches only the token states
    torch.testing.assert_close(result["pooled_prompt_embeds"], pooled, atol=1e-6, rtol=0)
    with torch.no_grad():
        lowres = encoders[1](tokenize_prompt("lowres", tok_2)[0]).text_embeds
    torch.testing.assert_close(result["negative_pooled_prompt_embeds"], lowres, atol=1e-6, rtol=0)


@pytest.mark.parametrize("negative", [None, ""])
def test_sdxl_empty_negative_is_zeros_then_padded_with_the_empty_prompt(encoders, tok, tok_2, negative):
    """A1111 zeros an empty SDXL negative prompt (one chunk of zeros, zero pooled); padding to the prompt's length
    then appends the empty prompt's embedding, which is not zeroed."""
    encoder = PromptEncoder([tok, tok_2], list(encoders), convention="sdxl")
    result = encoder.encode(" ".join(words(tok, 100)), negative_prompt=negative)
    negative_embeds = result["negative_prompt_embeds"][0]
    assert negative_embeds.shape == (154, 2 * tiny.HIDDEN)
    assert bool((negative_embeds[:77] == 0).all())
    empty = torch.cat([a1111_reference(encoders[0], tok, "", layer=-2),
                       a1111_reference(encoders[1], tok_2, "", layer=-2)], dim=-1)
    torch.testing.assert_close(negative_embeds[77:], empty, atol=1e-6, rtol=0)
    assert bool((result["negative_pooled_prompt_embeds"] == 0).all())
    # zero_empty_negative=False encodes "" instead
    plain = PromptEncoder([tok, tok_2], list(encoders), convention="sdxl", zero_empty_negative=False)
    torch.testing.assert_close(plain.encode("a cat", negative)["negative_prompt_embeds"][0], empty,
                               atol=1e-6, rtol=0)


def test_sdxl_clip_skip_follows_a1111s_option(encoders, tok, tok_2):
    """A1111 ignores Clip skip on SDXL unless "Clip skip SDXL" is on; then CLIP-L takes layer -N (no LayerNorm)
    and OpenCLIP bigG keeps its penultimate layer."""
    prompt = "a (red:1.2) car"
    default = PromptEncoder([tok, tok_2], list(encoders), convention="sdxl").encode(prompt)["prompt_embeds"]
    ignored = PromptEncoder([tok, tok_2], list(encoders), convention="sdxl", a1111_clip_skip=3).encode(prompt)
    assert torch.equal(ignored["prompt_embeds"], default)
    on = PromptEncoder([tok, tok_2], list(encoders), convention="sdxl", a1111_clip_skip=1,
                       a1111_sdxl_clip_l_skip=True).encode(prompt)["prompt_embeds"][0]
    torch.testing.assert_close(on[:, : tiny.HIDDEN], a1111_reference(encoders[0], tok, prompt, layer=-1),
                               atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(on[:, tiny.HIDDEN :], default[0, :, tiny.HIDDEN :], atol=0, rtol=0)


def test_batch_of_prompts_pads_by_repeating_the_last_position(encoders, tok):
    """A1111 stacks a batch of prompts of different lengths by repeating each shorter one's last vector."""
    encoder = PromptEncoder(tok, encoders[0])
    long_prompt, short_prompt = " ".join(words(tok, 100)), "a (cat:1.3)"
    batch = encoder.encode([long_prompt, short_prompt], negative_prompt="lowres")
    short = a1111_reference(encoders[0], tok, short_prompt)
    assert batch["prompt_embeds"].shape == (2, 154, tiny.HIDDEN)
    torch.testing.assert_close(batch["prompt_embeds"][1, :77], short, atol=1e-6, rtol=1e-6)
    assert torch.equal(batch["prompt_embeds"][1, 77:], short[-1:].expand(77, -1))
    torch.testing.assert_close(batch["prompt_embeds"][0], a1111_reference(encoders[0], tok, long_prompt),
                               atol=1e-6, rtol=1e-6)


def test_short_unweighted_prompt_equals_diffusers_encode_prompt(encoders, tok):
    pipe = tiny.sd_pipeline(*tiny.sd_unet_and_vae(), encoders[0], tok)
    with torch.no_grad():
        expected, expected_negative = pipe.encode_prompt("a photo of a cat", "cpu", 1, True, "blurry")
    result = PromptEncoder.from_pipeline(pipe).encode("a photo of a cat", negative_prompt="blurry")
    torch.testing.assert_close(result["prompt_embeds"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(result["negative_prompt_embeds"], expected_negative, atol=1e-6, rtol=0)


def test_extra_network_tags_do_not_change_the_encoding(encoders, tok):
    encoder = PromptEncoder(tok, encoders[0])
    with pytest.warns(UserWarning, match="lora"):
        tagged = encoder.encode("a cat <lora:detail:0.8>, sunny")["prompt_embeds"]
    assert torch.equal(tagged, encoder.encode("a cat , sunny")["prompt_embeds"])


def test_refusals_reach_encode(encoders, tok):
    encoder = PromptEncoder(tok, encoders[0])
    with pytest.raises(ValueError, match="AND"):
        encoder.encode("a cat AND a dog")
    with pytest.raises(ValueError, match="malformed"):
        encoder.encode("(a:1.2.3)")

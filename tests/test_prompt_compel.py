"""syntax="compel": the parser against compel's own parser (curated prompts and fuzzed strings), and the embeddings
against compel's `CompelForSD` / `CompelForSDXL` on tiny SD-1 and SDXL pipelines (weighted, down-weighted, long,
blended and conjoined prompts, batches, negatives)."""

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tiny_diffusion as tiny
from dualclip import DualClipTextModel, DualClipTextModelWithProjection
from dualclip.conditioning import PromptEncoder
from dualclip.conditioning_compel import Blend, parse_compel, split_point

compel = pytest.importorskip("compel")
from compel import CompelForSD, CompelForSDXL  # noqa: E402
from compel.prompt_parser import Blend as CompelBlend  # noqa: E402
from compel.prompt_parser import FlattenedPrompt, Fragment, PromptParser  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    yield from tiny.one_torch_thread()


# ---- parser ----------------------------------------------------------------------------------------------------------


def compel_parse(prompt: str):
    """compel's reading, in `parse_compel`'s shape; "error" where compel raises or cannot give embeddings."""
    try:
        conjunction = PromptParser().parse_conjunction(prompt)
    except Exception:
        return "error"
    parts = []
    for part, weight in zip(conjunction.prompts, conjunction.weights):
        if isinstance(part, CompelBlend):
            prompts = [[(f.text, f.weight) for f in p.children] for p in part.prompts]
            parts.append((("blend", prompts, list(part.weights), part.normalize_weights), weight))
        elif isinstance(part, FlattenedPrompt) and all(type(f) is Fragment for f in part.children):
            parts.append(([(f.text, f.weight) for f in part.children], weight))
        else:
            return "error"  # .swap(): prompt-to-prompt, refused here
    return parts or "error"


def our_parse(prompt: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts = parse_compel(prompt)
    except ValueError:
        return "error"
    return [((("blend", p.prompts, list(p.weights), p.normalize) if isinstance(p, Blend) else p), w)
            for p, w in parts]


CURATED = [
    "a cat", "a  cat", "", "   ", "a (cat)1.5, dog", "a(cat)1.5", "cat++ dog--", "cat+ +dog", "(a cat)+",
    "( a cat )1.2", "(a (b)1.5 c)0.8", '"a cat"1.3', "a,b", "a.b", "cat.attend(1.2)", "(cat).attend(+)",
    '("a cat", "a dog").blend(0.7, 0.3)', '("a cat", "a dog").and()', '("a cat", "a dog").and(1, 0.5)',
    '("a", "b").blend(1, 2, no_normalize)', r"a\(b\)", r"a\+b", "(", ")", "cat+++ dog", "(cat)-1.5", "(cat)1e3",
    "withLora(foo, 0.5) a cat", '(a, b)1.2', '"a" "b"', "(a)(b)", "a++b", '("a", "b").blend(1,1) trailing',
    '("a", "b").and() trailing', '("a", "b").and(1)', '("a", "b").blend(1, x)', '("a", "b").blend(1_0, 2)',
    '"a=b"', '("a=b", "c").blend()', "cat .attend(1.2)", "(a + b)", "a,,b", r'"a \"q\" b"', '("a", "").blend()',
    "withLora(x)", "(a)1.2.3", "(a)1.", "(a)-.5", '"a"--', "a-- b", "++a", "a cat.swap(dog)", r"5)=)\\)a",
    "a\tb\nc", "a\x0bb", "masterpiece, best quality, (a cozy cabin)1.2, [snow], (people)0.3, trees--",
]


@pytest.mark.parametrize("prompt", CURATED)
def test_parser_matches_compel(prompt):
    assert our_parse(prompt) == compel_parse(prompt)


TOKENS = ["a", "cat", " ", " ", "(", ")", '"', ",", ", ", ".", ".blend(", ".and(", ".add(", ".attend(", "+", "++", "-",
          "--", "0.5", "1", "1.2", "-0.3", "no_normalize", "withLora(x", "\\(", "\\)", '\\"', "\\", "=", ":", "\t"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=14).map("".join))
def test_parser_matches_compel_on_token_soup(prompt):
    assert our_parse(prompt) == compel_parse(prompt)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='ab ()+-.,"\\=15', max_size=24))
def test_parser_matches_compel_on_character_soup(prompt):
    assert our_parse(prompt) == compel_parse(prompt)


def test_documented_syntax_by_hand():
    """compel's README examples, expectations written from its documentation."""
    assert parse_compel("a cat++") == [([("a", 1.0), ("cat", 1.1 * 1.1)], 1.0)]
    assert parse_compel("a cat--") == [([("a", 1.0), ("cat", 0.9 ** 2)], 1.0)]
    assert parse_compel("a (dark forest)1.3") == [([("a", 1.0), ("dark forest", 1.3)], 1.0)]
    assert parse_compel('"a cat"0.5 sleeping') == [([("a cat", 0.5), ("sleeping", 1.0)], 1.0)]
    assert parse_compel("(a (b)2)0.5") == [([("a", 0.5), ("b", 1.0)], 1.0)]  # nested weights multiply
    assert parse_compel("a (b c)") == [([("a b c", 1.0)], 1.0)]  # brackets alone only group
    (blend, weight), = parse_compel('("a cat", "a dog").blend(0.7, 0.3)')
    assert weight == 1.0 and blend == Blend([[("a cat", 1.0)], [("a dog", 1.0)]], [0.7, 0.3], True)
    assert parse_compel('("a cat", "a dog").and(1, 0.5)') == [([("a cat", 1.0)], 1.0), ([("a dog", 1.0)], 0.5)]
    with pytest.raises(ValueError, match="swap"):
        parse_compel("a cat.swap(dog)")
    with pytest.raises(ValueError, match="2 prompts but 1 weights"):
        parse_compel('("a", "b").and(1)')
    with pytest.warns(UserWarning, match="withLora"):
        assert parse_compel("withLora(detail, 0.5) a cat") == [([("a cat", 1.0)], 1.0)]


def test_long_prompts_split_at_sentences_then_phrases_then_words():
    tokenizer = tiny.tokenizer(tiny.EOS_TOKEN)

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    sentence = ids("a cat. " + "dog " * 80)  # the last '.' within 75 tokens: after token 2
    assert split_point(tokenizer, sentence, 75) == 3
    phrase = ids("dog " * 60 + ", " + "cat " * 30)  # no '.': the last ',' at index 60
    assert split_point(tokenizer, phrase, 75) == 61
    words = ids("dog " * 100)  # no punctuation: after the last whole word, 75
    assert split_point(tokenizer, words, 75) == 75
    assert split_point(tokenizer, ids("dog " * 75), 75) == 75  # fits


# ---- embeddings against compel ---------------------------------------------------------------------------------------

LONG = " ".join(["a red cat on a mat, in the city."] * 12)
PROMPTS = [
    "a cat",
    "a cat++ in a (dark forest)0.8",
    "a (dog)-- and a cat",
    LONG + " (sunset)1.3",
    "(" + LONG + ")0.7 end",
    '("a cat", "a dog").blend(0.7, 0.3)',
    '("a cat", "a (dog)1.3").and()',
]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    folders = tiny.save_stock_text_encoders(str(tmp_path_factory.mktemp("stock")))
    return (DualClipTextModel.from_pretrained(folders["text_encoder"]).eval(),
            DualClipTextModelWithProjection.from_pretrained(folders["text_encoder_2"]).eval())


@pytest.fixture(scope="module")
def sd_pipe(encoders):
    return tiny.sd_pipeline(*tiny.sd_unet_and_vae(), encoders[0], tiny.tokenizer(tiny.EOS_TOKEN))


@pytest.fixture(scope="module")
def sdxl_pipe(encoders):
    return tiny.sdxl_pipeline(*tiny.sdxl_unet_and_vae(), *encoders, tiny.tokenizer(tiny.EOS_TOKEN),
                              tiny.tokenizer("!"))


def assert_same(ours, theirs, name):
    assert ours.shape == theirs.shape, name
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("prompt", PROMPTS + ['("a cat", "a (dog)0.5").and(1, 0.5)'])
def test_sd1_equals_compel(sd_pipe, prompt):
    negative = "lowres, (blurry)0.5"
    expected = CompelForSD(sd_pipe)(prompt, negative_prompt=negative)
    result = PromptEncoder.from_pipeline(sd_pipe, syntax="compel").encode(prompt, negative_prompt=negative)
    assert_same(result["prompt_embeds"], expected.embeds, "prompt_embeds")
    assert_same(result["negative_prompt_embeds"], expected.negative_embeds, "negative_prompt_embeds")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_sdxl_equals_compel(sdxl_pipe, prompt):
    """(compel itself fails on SDXL for `.and()` with weights other than 1, so that case is SD-1 only.)"""
    negative = "lowres, (blurry)0.5"
    expected = CompelForSDXL(sdxl_pipe)(prompt, negative_prompt=negative)
    result = PromptEncoder.from_pipeline(sdxl_pipe, syntax="compel").encode(prompt, negative_prompt=negative)
    assert_same(result["prompt_embeds"], expected.embeds, "prompt_embeds")
    assert_same(result["negative_prompt_embeds"], expected.negative_embeds, "negative_prompt_embeds")
    assert_same(result["pooled_prompt_embeds"], expected.pooled_embeds, "pooled_prompt_embeds")
    assert_same(result["negative_pooled_prompt_embeds"], expected.negative_pooled_embeds, "negative_pooled")


def test_batches_and_empty_negatives_equal_compel(sd_pipe, sdxl_pipe):
    prompts = ["a cat++", LONG, '("a cat", "a dog").blend(1, 1)']
    for pipe, wrapper in ((sd_pipe, CompelForSD), (sdxl_pipe, CompelForSDXL)):
        expected = wrapper(pipe)(prompts, negative_prompt="")
        result = PromptEncoder.from_pipeline(pipe, syntax="compel").encode(prompts, negative_prompt="")
        assert_same(result["prompt_embeds"], expected.embeds, "prompt_embeds")
        assert_same(result["negative_prompt_embeds"], expected.negative_embeds, "negative_prompt_embeds")


def test_missing_negative_is_what_the_pipeline_would_use(sd_pipe, sdxl_pipe):
    """compel returns no negative embeddings for `negative_prompt=None`; the pipeline then zeros them for SDXL
    (force_zeros_for_empty_prompt) and encodes "" for SD-1."""
    sdxl = PromptEncoder.from_pipeline(sdxl_pipe, syntax="compel").encode("a cat++")
    assert bool((sdxl["negative_prompt_embeds"] == 0).all()) and bool((sdxl["negative_pooled_prompt_embeds"] == 0).all())
    sd = PromptEncoder.from_pipeline(sd_pipe, syntax="compel").encode("a cat++")
    with torch.no_grad():
        _, expected_negative = sd_pipe.encode_prompt("a cat", "cpu", 1, True, "")
    assert_same(sd["negative_prompt_embeds"], expected_negative, "negative_prompt_embeds")


def test_compel_embeddings_drive_the_pipelines(sd_pipe, sdxl_pipe):
    for pipe in (sd_pipe, sdxl_pipe):
        embeds = PromptEncoder.from_pipeline(pipe, syntax="compel").encode(LONG + " cat++", negative_prompt="lowres")
        images = tiny.generate(pipe, **embeds)
        assert images.shape == (1, 32, 32, 3) and bool((images == images).all())


def test_multi_vector_textual_inversion_equals_compel_with_its_diffusers_manager(tmp_path, encoders):
    """Multi-vector tokens expand to all their vectors, as compel does given `DiffusersTextualInversionManager`."""
    from compel.diffusers_textual_inversion_manager import DiffusersTextualInversionManager
    from safetensors.torch import save_file

    # its own copy of the encoder: loading an embedding grows the token table
    pipe = tiny.sd_pipeline(*tiny.sd_unet_and_vae(), copy.deepcopy(encoders[0]), tiny.tokenizer(tiny.EOS_TOKEN))
    vectors = torch.randn(2, tiny.HIDDEN, generator=torch.Generator().manual_seed(3))
    save_file({"<tiny-concept>": vectors}, str(tmp_path / "concept.safetensors"))
    pipe.load_textual_inversion(str(tmp_path / "concept.safetensors"))
    for prompt in ("a photo of <tiny-concept>++ on a beach", "a (<tiny-concept> cat)0.5, beach"):
        manager = DiffusersTextualInversionManager(pipe)
        expected = CompelForSD(pipe, textual_inversion_manager=manager)(prompt, negative_prompt="lowres")
        result = PromptEncoder.from_pipeline(pipe, syntax="compel").encode(prompt, negative_prompt="lowres")
        assert_same(result["prompt_embeds"], expected.embeds, prompt)

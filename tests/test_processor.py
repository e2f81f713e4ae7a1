"""DualClipProcessor: routing to the tokenizer and image processor, errors, save/load.

The tokenizer here is transformers' `CLIPTokenizer`, built offline from the packaged BPE file, so these tests do not
depend on `DualClipTokenizer`; `test_with_dual_clip_tokenizer` covers that pairing when the class is available.
"""

import copy
import gzip
import json
from importlib import resources

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, CLIPTokenizer, PretrainedConfig
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.models.auto.processing_auto import processor_class_from_name
from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

from dualclip.image_processing_dualclip import DualClipImageProcessor
from dualclip.processing_dualclip import DualClipProcessor


TEXTS = ["a photo of a cat", "a dog"]
CLIP_IDS_CAT = [49406, 320, 1125, 539, 320, 2368, 49407]  # OpenAI CLIP's ids for TEXTS[0]


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    """transformers' CLIPTokenizer from vocab.json/merges.txt written from the packaged OpenAI BPE file."""
    with resources.files("dualclip").joinpath("assets/bpe_simple_vocab_16e6.txt.gz").open("rb") as raw:
        lines = gzip.decompress(raw.read()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    alphabet = _byte_alphabet()
    vocab = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m.split()) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder)


@pytest.fixture
def processor(clip_tokenizer):
    # A copy per test: transformers tokenizers keep the last call's padding in their backend and save it.
    return DualClipProcessor(DualClipImageProcessor(), copy.deepcopy(clip_tokenizer))


def _images():
    rng = np.random.default_rng(0)
    return [
        PIL.Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)),
        rng.integers(0, 256, (90, 50, 3), dtype=np.uint8),
    ]


class _ProcessorTestConfig(PretrainedConfig):
    model_type = "dualclip_processor_test"


def _ensure_auto_classes_know_dualclip():
    """`import dualclip` registers these classes; until it does, register them under a test-only config."""
    registered = [cls for backends in IMAGE_PROCESSOR_MAPPING._extra_content.values() for cls in backends.values()]
    if DualClipImageProcessor not in registered:
        AutoImageProcessor.register(_ProcessorTestConfig, image_processor_classes={"pil": DualClipImageProcessor})
    if processor_class_from_name("DualClipProcessor") is None:
        AutoProcessor.register(_ProcessorTestConfig, DualClipProcessor)


def test_text_and_images_together(processor, clip_tokenizer):
    out = processor(text=TEXTS, images=_images(), return_tensors="pt", padding=True)
    assert set(out) == {"input_ids", "attention_mask", "pixel_values"}
    assert out["input_ids"][0].tolist() == CLIP_IDS_CAT
    expected_text = clip_tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert torch.equal(out["input_ids"], expected_text["input_ids"])
    assert torch.equal(out["attention_mask"], expected_text["attention_mask"])
    assert out["pixel_values"].dtype == torch.float32 and tuple(out["pixel_values"].shape) == (2, 3, 224, 224)
    expected_pixels = DualClipImageProcessor()(_images(), return_tensors="pt")["pixel_values"]
    assert torch.equal(out["pixel_values"], expected_pixels)


def test_text_only_and_images_only(processor):
    text_only = processor(text=TEXTS, return_tensors="pt", padding=True)
    assert set(text_only) == {"input_ids", "attention_mask"}
    images_only = processor(images=_images()[0], return_tensors="pt")
    assert set(images_only) == {"pixel_values"}
    assert tuple(images_only["pixel_values"].shape) == (1, 3, 224, 224)


def test_options_are_routed_to_their_sub_processor(processor):
    out = processor(
        text=TEXTS,
        images=_images(),
        return_tensors="np",
        padding="max_length",
        max_length=12,
        crop_size={"height": 32, "width": 48},
    )
    assert out["input_ids"].shape == (2, 12)
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].shape == (2, 3, 32, 48)


def test_missing_inputs_and_sub_processors_raise(processor, clip_tokenizer):
    with pytest.raises(ValueError, match="needs `text`, `images` or both; both are None"):
        processor()
    with pytest.raises(ValueError, match="takes no `videos`"):
        processor(text=TEXTS, videos=[np.zeros((2, 8, 8, 3))])
    with pytest.raises(ValueError, match="`tokenizer` is required"):
        DualClipProcessor(DualClipImageProcessor())
    with pytest.raises(ValueError, match="`image_processor` is required"):
        DualClipProcessor(tokenizer=clip_tokenizer)
    with pytest.raises(ValueError, match="`images` is None|`return_tensors` must be"):
        processor(images=_images(), return_tensors="tf")


def test_image_errors_come_through_the_processor(processor):
    with pytest.raises(ValueError, match=r"`images\[0\]` is a 4-D"):
        processor(images=[np.zeros((2, 8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="not an existing image file"):
        processor("a photo of a cat")  # transformers 5 processors take images first


def test_save_and_load_round_trip(processor, tmp_path):
    _ensure_auto_classes_know_dualclip()
    processor.image_processor.crop_size = {"height": 96, "width": 96}
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "DualClipProcessor"
    assert saved["image_processor"]["image_processor_type"] == "DualClipImageProcessor"
    expected = processor(text=TEXTS, images=_images(), return_tensors="pt", padding=True)
    for loaded in (DualClipProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is DualClipProcessor
        assert type(loaded.image_processor) is DualClipImageProcessor
        out = loaded(text=TEXTS, images=_images(), return_tensors="pt", padding=True)
        assert all(torch.equal(out[key], expected[key]) for key in expected)


def test_with_dual_clip_tokenizer(tmp_path):
    tokenization = pytest.importorskip("dualclip.tokenization_dualclip")
    _ensure_auto_classes_know_dualclip()
    if tokenizer_class_from_name("DualClipTokenizer") is None:
        AutoTokenizer.register(_ProcessorTestConfig, tokenization.DualClipTokenizer)
    processor = DualClipProcessor(DualClipImageProcessor(), tokenization.DualClipTokenizer())
    out = processor(text=TEXTS, images=_images(), return_tensors="pt", padding=True)
    assert set(out) == {"input_ids", "attention_mask", "pixel_values"}
    assert out["input_ids"][0].tolist() == CLIP_IDS_CAT
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded.tokenizer) is tokenization.DualClipTokenizer
    reloaded = loaded(text=TEXTS, images=_images(), return_tensors="pt", padding=True)
    assert all(torch.equal(reloaded[key], out[key]) for key in out)

"""The embedded tiny-digits model: what ships, and its held-out zero-shot accuracy, recomputed from the weights."""

import json
import os
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open

import dualclip
from dualclip import DualClipModel
from dualclip.tiny_model import (
    DIGIT_NAMES,
    DIGIT_TEMPLATE,
    HELDOUT_START,
    TINY_MODEL_PATH,
    digits_to_uint8,
    load_heldout_digits,
)
from dualclip.tokenization_dualclip import DualClipTokenizer
from dualclip.zero_shot import classify, load_model_and_processor


@pytest.fixture(scope="module")
def heldout():
    """Images 1500-1796 straight from scikit-learn (not from the shipped copy), and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits_to_uint8(digits.images[HELDOUT_START:]), digits.target[HELDOUT_START:]


@pytest.fixture(scope="module")
def accuracy(heldout):
    model, processor = load_model_and_processor(TINY_MODEL_PATH)
    images, labels = heldout
    probabilities = classify(model, processor, list(images), DIGIT_NAMES, template=DIGIT_TEMPLATE)
    assert probabilities.shape == (len(labels), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    return float((probabilities.argmax(axis=1) == labels).mean())


def test_heldout_zero_shot_accuracy_is_at_least_90_percent(accuracy):
    assert accuracy >= 0.90, accuracy


def test_model_card_states_the_measured_accuracy(accuracy):
    with open(os.path.join(TINY_MODEL_PATH, "README.md")) as file:
        card = file.read()
    stated = re.search(r"\*\*([01]\.\d{4})\*\* \((\d+) of 297\) on digits images 1500-1796", card)
    assert stated, "the card must state the held-out accuracy"
    assert float(stated.group(1)) == pytest.approx(accuracy, abs=5e-5)
    assert "a handwritten digit {}" in card


def test_shipped_heldout_images_are_sklearns_1500_to_1796(heldout):
    images, labels = load_heldout_digits()
    assert images.dtype == np.uint8 and images.shape == (297, 8, 8)
    np.testing.assert_array_equal(images, heldout[0])
    np.testing.assert_array_equal(labels, heldout[1])


def test_folder_is_small_complete_and_float16_on_disk():
    names = set(os.listdir(TINY_MODEL_PATH))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
            "README.md", "heldout_digits.npz"} <= names
    assert not any(name.endswith((".py", ".bin")) for name in names)
    size = sum(os.path.getsize(os.path.join(TINY_MODEL_PATH, name)) for name in names)
    assert size <= 10 * 1024 * 1024, size
    with safe_open(os.path.join(TINY_MODEL_PATH, "model.safetensors"), "pt") as weights:
        assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"F16"}
    with open(os.path.join(TINY_MODEL_PATH, "config.json")) as file:
        config = json.load(file)
    assert config["model_type"] == "dualclip" and "auto_map" not in config


def test_loads_in_float32_by_default():
    model = DualClipModel.from_pretrained(TINY_MODEL_PATH)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config.text_config.vocab_size == 49408


def test_tokenizer_is_the_original():
    _, processor = load_model_and_processor(TINY_MODEL_PATH)
    original = DualClipTokenizer()
    texts = ["a handwritten digit seven", "A photo of a CAT!", "naïve café &amp; résumé", "x" * 300]
    shipped = processor.tokenizer(texts, padding="max_length", truncation=True)["input_ids"]
    assert shipped == original(texts, padding="max_length", truncation=True)["input_ids"]
    assert type(processor.tokenizer) is DualClipTokenizer and len(processor.tokenizer) == 49408


def test_exported_from_the_package():
    assert dualclip.TINY_MODEL_PATH == TINY_MODEL_PATH
    assert os.path.isdir(dualclip.TINY_MODEL_PATH)

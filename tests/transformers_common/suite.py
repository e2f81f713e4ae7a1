"""transformers' `ModelTesterMixin` on the five stock CLIP classes and on their five dualclip counterparts.

Not collected by `pytest tests` (the file name does not match `test_*.py`): tests/test_transformers_common.py runs
it in a subprocess, with the folder of the fetched reference tests on `PYTHONPATH`, and compares the outcomes.

The testers build the small configurations and inputs of transformers' own CLIP tests
(tests/models/clip/test_modeling_clip.py): towers of 2 layers, hidden size 32, 4 heads, intermediate size 37,
dropout 0.1, batch 12; text: vocabulary 99, 7 tokens, 512 positions; vision: 30x30 images in 2x2 patches; the
dual model projects to 64. dualclip gets configs of the same values through its own config classes.

One test class per model class, named after it (`CLIPTextModelTest`, `DualClipTextModelTest`, ...), so a test's
outcome for a stock class pairs with its outcome for the dualclip counterpart (`COUNTERPARTS`).
"""

import inspect
import random
import tempfile
import unittest
import zlib

import numpy as np
import torch
import transformers
from transformers.models.auto import modeling_auto
from transformers.testing_utils import torch_device
from transformers_tests import test_modeling_common as common
from transformers_tests.test_modeling_common import (
    ModelTesterMixin,
    floats_tensor,
    ids_tensor,
    random_attention_mask,
)

import dualclip

# stock class -> dualclip class taking its place
COUNTERPARTS = {
    "CLIPModel": "DualClipModel",
    "CLIPTextModel": "DualClipTextModel",
    "CLIPTextModelWithProjection": "DualClipTextModelWithProjection",
    "CLIPVisionModel": "DualClipVisionModel",
    "CLIPVisionModelWithProjection": "DualClipVisionModelWithProjection",
}
# Config classes of each implementation: (dual model, text tower, vision tower).
CONFIGS = {
    "stock": (transformers.CLIPConfig, transformers.CLIPTextConfig, transformers.CLIPVisionConfig),
    "dualclip": (dualclip.DualClipConfig, dualclip.DualClipTextConfig, dualclip.DualClipVisionConfig),
}

# transformers' tests look some classes up by name in its auto tables (e.g. `test_training` does not train the
# base models listed in MODEL_MAPPING_NAMES). dualclip's base models take the places of CLIP's there, as they do in
# the Auto classes that `import dualclip` registers them with.
for _model_type, _name in (
    ("dualclip", "DualClipModel"),
    ("dualclip_text_model", "DualClipTextModel"),
    ("dualclip_vision_model", "DualClipVisionModel"),
):
    modeling_auto.MODEL_MAPPING_NAMES.setdefault(_model_type, _name)


class VisionTester:
    """CLIP's vision tester: 12 images of 30x30 in 2x2 patches, so 225 patches + the class token."""

    def __init__(self, parent, implementation, batch_size=12, image_size=30, patch_size=2, num_channels=3,
                 is_training=True, hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, dropout=0.1, attention_dropout=0.1, initializer_range=0.02):
        self.parent = parent
        self.config_class = CONFIGS[implementation][2]
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.is_training = is_training
        self.hidden_size = hidden_size
        self.projection_dim = projection_dim
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.seq_length = (image_size // patch_size) ** 2 + 1

    def config_values(self):
        return dict(
            image_size=self.image_size, patch_size=self.patch_size, num_channels=self.num_channels,
            hidden_size=self.hidden_size, projection_dim=self.projection_dim,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size, dropout=self.dropout,
            attention_dropout=self.attention_dropout, initializer_range=self.initializer_range,
        )

    def get_config(self):
        return self.config_class(**self.config_values())

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class TextTester:
    """CLIP's text tester: 12 rows of 7 ids below 99, each attending to a random-length prefix (at least 1)."""

    def __init__(self, parent, implementation, batch_size=12, seq_length=7, is_training=True, use_input_mask=True,
                 vocab_size=99, hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, dropout=0.1, attention_dropout=0.1, max_position_embeddings=512,
                 initializer_range=0.02):
        self.parent = parent
        self.config_class = CONFIGS[implementation][1]
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.use_input_mask = use_input_mask
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.projection_dim = projection_dim
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range

    def config_values(self):
        return dict(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, projection_dim=self.projection_dim,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size, dropout=self.dropout,
            attention_dropout=self.attention_dropout, max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
        )

    def get_config(self):
        return self.config_class(**self.config_values())

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = None
        if self.use_input_mask:
            # a random mask, then made a prefix of ones (right padding) of random length in [1, seq_length - 2]
            attention_mask = random_attention_mask([self.batch_size, self.seq_length])
            lengths = np.random.randint(1, self.seq_length - 1, size=(self.batch_size,))
            for row, length in enumerate(lengths):
                attention_mask[row, :length] = 1
                attention_mask[row, length:] = 0
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class DualTester:
    """CLIP's dual-model tester: both towers above, projected to 64, with `return_loss=True`."""

    def __init__(self, parent, implementation, projection_dim=64, is_training=True):
        self.parent = parent
        self.config_class = CONFIGS[implementation][0]
        self.text_model_tester = TextTester(parent, implementation)
        self.vision_model_tester = VisionTester(parent, implementation)
        self.batch_size = self.text_model_tester.batch_size
        self.projection_dim = projection_dim
        self.is_training = is_training

    def get_config(self):
        return self.config_class(
            text_config=self.text_model_tester.get_config().to_dict(),
            vision_config=self.vision_model_tester.get_config().to_dict(),
            projection_dim=self.projection_dim,
        )

    def prepare_config_and_inputs(self):
        _, input_ids, attention_mask = self.text_model_tester.prepare_config_and_inputs()
        _, pixel_values = self.vision_model_tester.prepare_config_and_inputs()
        return self.get_config(), input_ids, attention_mask, pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask, pixel_values = self.prepare_config_and_inputs()
        return config, {
            "input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
            "return_loss": True,
        }


class _CommonTest(ModelTesterMixin):
    """ModelTesterMixin for one model class; subclasses set `model_class`, `implementation` and `model_tester_class`."""

    model_class = None
    implementation = None
    model_tester_class = None

    def setUp(self):
        # Same seed for a test on a stock class and on its counterpart: identical inputs and initial weights.
        seed = zlib.crc32(self._testMethodName.encode())
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        common.global_rng.seed(seed)
        self.model_tester = self.model_tester_class(self, self.implementation)

    def _new_model(self, config):
        return self.model_class(config).to(torch_device).eval()


class _VisionCommonTest(_CommonTest):
    model_tester_class = VisionTester
    test_resize_embeddings = False  # no token embeddings

    def test_model(self):
        config, pixel_values = self.model_tester.prepare_config_and_inputs()
        tester = self.model_tester
        with torch.no_grad():
            result = self._new_model(config)(pixel_values)
        self.assertEqual(result.last_hidden_state.shape, (tester.batch_size, tester.seq_length, tester.hidden_size))
        if "Projection" in self.model_class.__name__:
            self.assertEqual(result.image_embeds.shape, (tester.batch_size, tester.projection_dim))
        else:
            self.assertEqual(result.pooler_output.shape, (tester.batch_size, tester.hidden_size))

    def test_model_get_set_embeddings(self):
        # CLIP's own version: the input embeddings of an image tower are a module, not an nn.Embedding
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        model = self.model_class(config)
        self.assertIsInstance(model.get_input_embeddings(), torch.nn.Module)
        output_embeddings = model.get_output_embeddings()
        self.assertTrue(output_embeddings is None or isinstance(output_embeddings, torch.nn.Linear))

    def test_forward_signature(self):
        arg_names = list(inspect.signature(self.model_class.forward).parameters)
        self.assertEqual(arg_names[1:2], ["pixel_values"])


class _TextCommonTest(_CommonTest):
    model_tester_class = TextTester
    model_split_percents = [0.5, 0.8, 0.9]  # as CLIP's text tests: the towers are tiny

    def test_model(self):
        config, input_ids, attention_mask = self.model_tester.prepare_config_and_inputs()
        tester = self.model_tester
        model = self._new_model(config)
        for kwargs in ({"attention_mask": attention_mask}, {}):
            with torch.no_grad():
                result = model(input_ids, **kwargs)
            self.assertEqual(result.last_hidden_state.shape,
                             (tester.batch_size, tester.seq_length, tester.hidden_size))
            if "Projection" in self.model_class.__name__:
                self.assertEqual(result.text_embeds.shape, (tester.batch_size, tester.projection_dim))
            else:
                self.assertEqual(result.pooler_output.shape, (tester.batch_size, tester.hidden_size))

    def test_forward_signature(self):
        arg_names = list(inspect.signature(self.model_class.forward).parameters)
        self.assertEqual(arg_names[1:2], ["input_ids"])


class _DualCommonTest(_CommonTest):
    model_tester_class = DualTester
    _is_composite = True
    test_resize_embeddings = False
    additional_model_inputs = ["pixel_values"]

    def test_model(self):
        config, input_ids, attention_mask, pixel_values = self.model_tester.prepare_config_and_inputs()
        text_batch = self.model_tester.text_model_tester.batch_size
        image_batch = self.model_tester.vision_model_tester.batch_size
        with torch.no_grad():
            result = self._new_model(config)(input_ids, pixel_values, attention_mask)
        self.assertEqual(result.logits_per_image.shape, (image_batch, text_batch))
        self.assertEqual(result.logits_per_text.shape, (text_batch, image_batch))

    def test_load_vision_text_config(self):
        # the tower configs load from a folder holding the dual config
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        _, text_config_class, vision_config_class = CONFIGS[self.implementation]
        with tempfile.TemporaryDirectory() as folder:
            config.save_pretrained(folder)
            self.assertDictEqual(config.vision_config.to_dict(), vision_config_class.from_pretrained(folder).to_dict())
            self.assertDictEqual(config.text_config.to_dict(), text_config_class.from_pretrained(folder).to_dict())


def _test_class(name, family, model_class, implementation):
    attributes = {"model_class": model_class, "all_model_classes": (model_class,), "implementation": implementation,
                  "__module__": __name__, "__qualname__": name}
    return type(name, (family, unittest.TestCase), attributes)


_FAMILIES = {
    "CLIPModel": _DualCommonTest,
    "CLIPTextModel": _TextCommonTest,
    "CLIPTextModelWithProjection": _TextCommonTest,
    "CLIPVisionModel": _VisionCommonTest,
    "CLIPVisionModelWithProjection": _VisionCommonTest,
}
for _stock, _family in _FAMILIES.items():
    for _implementation, _class_name in (("stock", _stock), ("dualclip", COUNTERPARTS[_stock])):
        _model_class = getattr(transformers if _implementation == "stock" else dualclip, _class_name)
        globals()[f"{_class_name}Test"] = _test_class(f"{_class_name}Test", _family, _model_class, _implementation)

"""DualClipImageProcessor against the reference, transformers' CLIPImageProcessorPil, input kind by input kind."""

import json
import pathlib

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor, PretrainedConfig
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

import dualclip.image_processing_dualclip as image_processing
from dualclip.image_processing_dualclip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, DualClipImageProcessor


TOLERANCE = 1e-6
OPENCLIP_STYLE = {  # a non-OpenAI preprocessing: larger resize and crop, ImageNet-style statistics, bilinear
    "size": {"shortest_edge": 256},
    "crop_size": {"height": 240, "width": 240},
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": PIL.Image.Resampling.BILINEAR,
}


def _rng(seed=0):
    return np.random.default_rng(seed)


def _uint8_hwc(height=37, width=53, channels=3, seed=0):
    return _rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def _pixels(processor, images, **kwargs):
    return processor(images, return_tensors="np", **kwargs)["pixel_values"]


def assert_matches_reference(images, init=None, **call_kwargs):
    """Same pixels as CLIPImageProcessorPil built and called with the same settings."""
    init = init or {}
    expected = _pixels(CLIPImageProcessorPil(**init), images, **call_kwargs)
    actual = _pixels(DualClipImageProcessor(**init), images, **call_kwargs)
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    assert np.abs(actual.astype(np.float64) - expected).max() <= TOLERANCE


def _pil_with_palette_transparency():
    image = PIL.Image.fromarray(_uint8_hwc()).convert("P")
    image.info["transparency"] = 0
    return image


PIL_IMAGES = {
    "RGB": lambda: PIL.Image.fromarray(_uint8_hwc()),
    "RGB portrait": lambda: PIL.Image.fromarray(_uint8_hwc(301, 199)),
    "RGB smaller than crop": lambda: PIL.Image.fromarray(_uint8_hwc(20, 31)),
    "RGBA": lambda: PIL.Image.fromarray(_uint8_hwc(channels=4)),
    "L": lambda: PIL.Image.fromarray(_uint8_hwc()[:, :, 0]),
    "LA": lambda: PIL.Image.fromarray(_uint8_hwc(channels=4)).convert("LA"),
    "P": lambda: PIL.Image.fromarray(_uint8_hwc()).convert("P"),
    "P with transparency": _pil_with_palette_transparency,
    "CMYK": lambda: PIL.Image.fromarray(_uint8_hwc()).convert("CMYK"),
    "1": lambda: PIL.Image.fromarray(_uint8_hwc()).convert("1"),
    "I;16": lambda: PIL.Image.fromarray(_rng().integers(0, 65536, (37, 53), dtype=np.uint16)),
    "I": lambda: PIL.Image.fromarray(_rng().integers(-50, 400, (37, 53), dtype=np.int32)),
    "F": lambda: PIL.Image.fromarray(_rng().random((37, 53), dtype=np.float32) * 255),
}


@pytest.mark.parametrize("kind", list(PIL_IMAGES))
def test_pil_images_match_reference(kind):
    assert_matches_reference(PIL_IMAGES[kind]())


def _float01():
    return _rng(1).random((37, 53, 3), dtype=np.float32)


ARRAYS = {
    "uint8 HWC": (lambda: _uint8_hwc(), {}),
    "uint8 CHW": (lambda: _uint8_hwc().transpose(2, 0, 1).copy(), {}),
    "uint8 HW1": (lambda: _uint8_hwc(channels=1), {}),
    "uint8 1HW": (lambda: _uint8_hwc(channels=1).transpose(2, 0, 1).copy(), {}),
    "uint8 RGBA HWC": (lambda: _uint8_hwc(channels=4), {}),
    "int64 HWC": (lambda: _uint8_hwc().astype(np.int64), {}),
    "float whole numbers 0..255": (lambda: _uint8_hwc().astype(np.float32), {}),
    "float [0,1], do_rescale=False": (_float01, {"do_rescale": False}),
    # The reference rescales [0, 1] floats a second time by default; ours does the same (and warns).
    "float [0,1], default do_rescale": (_float01, {}),
    "float64 [0,1] CHW": (lambda: _float01().astype(np.float64).transpose(2, 0, 1), {"do_rescale": False}),
    "float16 [0,1]": (lambda: _float01().astype(np.float16), {"do_rescale": False, "do_normalize": False}),
    "float RGBA [0,1]": (lambda: _rng(2).random((37, 53, 4)), {"do_rescale": False}),
    "torch uint8 CHW": (lambda: torch.from_numpy(_uint8_hwc().transpose(2, 0, 1).copy()), {}),
    "torch uint8 HWC": (lambda: torch.from_numpy(_uint8_hwc()), {}),
    "torch float [0,1] CHW": (lambda: torch.from_numpy(_float01()).permute(2, 0, 1), {"do_rescale": False}),
    "numpy batch BHWC": (lambda: np.stack([_uint8_hwc(seed=s) for s in range(3)]), {}),
    "torch batch BCHW": (lambda: torch.from_numpy(_uint8_hwc(seed=9)[None].repeat(3, 0)).permute(0, 3, 1, 2), {}),
}


@pytest.mark.parametrize("kind", list(ARRAYS))
def test_arrays_and_tensors_match_reference(kind):
    make, call_kwargs = ARRAYS[kind]
    assert_matches_reference(make(), **call_kwargs)


def test_lists_of_mixed_kinds_and_nested_lists_match_reference():
    images = [
        PIL.Image.fromarray(_uint8_hwc(seed=3)),
        _uint8_hwc(50, 40, seed=4),
        torch.from_numpy(_uint8_hwc(seed=5)).permute(2, 0, 1),
        PIL.Image.fromarray(_uint8_hwc(seed=6, channels=4)),
    ]
    assert_matches_reference(images)
    assert_matches_reference(tuple(images))
    assert_matches_reference([images[:2], images[2:]])


def test_channel_layout_can_be_given_for_ambiguous_shapes():
    ambiguous = _uint8_hwc(3, 40, 3)  # first and last axis both look like channels
    assert_matches_reference(ambiguous)  # both read it as channels-first
    assert_matches_reference(ambiguous, input_data_format="channels_last")
    assert not np.allclose(
        _pixels(DualClipImageProcessor(), ambiguous),
        _pixels(DualClipImageProcessor(), ambiguous, input_data_format="channels_last"),
    )


def test_two_dimensional_arrays_are_grayscale():
    # The reference rejects 2-D arrays outright; ours reads them as (H, W) grayscale.
    gray = _uint8_hwc(channels=1)
    processor = DualClipImageProcessor()
    np.testing.assert_array_equal(_pixels(processor, gray[:, :, 0]), _pixels(processor, gray))
    np.testing.assert_array_equal(_pixels(processor, torch.from_numpy(gray[:, :, 0])), _pixels(processor, gray))


def test_bfloat16_tensors_are_accepted():
    # The reference fails on bfloat16 (numpy has no such dtype); every bfloat16 value is exact in float32.
    image = torch.from_numpy(_float01()).permute(2, 0, 1).to(torch.bfloat16)
    processor = DualClipImageProcessor(do_rescale=False)
    np.testing.assert_array_equal(_pixels(processor, image), _pixels(processor, image.float()))


def test_file_paths_match_reference(tmp_path):
    rgb, rgba = tmp_path / "rgb.png", tmp_path / "rgba.png"
    PIL.Image.fromarray(_uint8_hwc()).save(rgb)
    PIL.Image.fromarray(_uint8_hwc(channels=4)).save(rgba)
    assert_matches_reference(str(rgb))
    assert_matches_reference([str(rgb), str(rgba)])  # a file's transparency is dropped, as in the reference
    np.testing.assert_array_equal(
        _pixels(DualClipImageProcessor(), pathlib.Path(rgb)), _pixels(DualClipImageProcessor(), str(rgb))
    )


SETTINGS = {
    "openclip-style 256/240": OPENCLIP_STYLE,
    "scalar mean and std": {"image_mean": 0.5, "image_std": 0.5},
    "exact height and width": {"size": {"height": 200, "width": 150}, "do_center_crop": False},
    "crop larger than image is zero-padded": {"do_resize": False, "crop_size": {"height": 41, "width": 60}},
    "no resize, no crop": {"do_resize": False, "do_center_crop": False},
    "no rescale, no normalize": {"do_rescale": False, "do_normalize": False},
    "no RGB conversion": {"do_convert_rgb": False},
    "nearest, odd crop": {"resample": 0, "crop_size": {"height": 101, "width": 77}},
    "lanczos": {"resample": PIL.Image.Resampling.LANCZOS, "size": {"shortest_edge": 64}},
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_non_default_settings_match_reference(name):
    settings = SETTINGS[name]
    inputs = [PIL.Image.fromarray(_uint8_hwc(60, 45)), _uint8_hwc(45, 60, seed=7), _float01()]
    kwargs = {"do_rescale": False} if settings.get("do_rescale", True) is False else {}
    for image in inputs[:2]:
        assert_matches_reference(image, init=settings)
        assert_matches_reference(image, **settings)  # the same settings given per call
    assert_matches_reference(inputs[2], init={**settings, "do_rescale": False}, **kwargs)


def test_defaults_are_openai_clip():
    processor = DualClipImageProcessor()
    assert processor.size == {"shortest_edge": 224}
    assert processor.crop_size == {"height": 224, "width": 224}
    assert processor.resample == PIL.Image.Resampling.BICUBIC
    assert tuple(processor.image_mean) == OPENAI_CLIP_MEAN
    assert tuple(processor.image_std) == OPENAI_CLIP_STD
    assert processor.do_resize and processor.do_center_crop and processor.do_rescale
    assert processor.do_normalize and processor.do_convert_rgb


def test_return_tensors_types_and_shapes():
    processor = DualClipImageProcessor(crop_size=64, size=64)
    images = [_uint8_hwc(seed=s) for s in range(2)]
    as_torch = processor(images, return_tensors="pt")["pixel_values"]
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float32
    assert tuple(as_torch.shape) == (2, 3, 64, 64)
    as_numpy = processor(images, return_tensors="np")["pixel_values"]
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32 and as_numpy.shape == (2, 3, 64, 64)
    as_list = processor(images)["pixel_values"]
    assert isinstance(as_list, list) and len(as_list) == 2
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (3, 64, 64) for a in as_list)
    np.testing.assert_array_equal(as_torch.numpy(), as_numpy)
    one = processor(images[0], return_tensors="pt")["pixel_values"]
    assert tuple(one.shape) == (1, 3, 64, 64)


def test_outputs_are_float32_even_where_the_reference_keeps_the_input_dtype():
    # Without rescale and normalize the reference returns uint8 for uint8 input; ours always float32.
    pixels = _pixels(DualClipImageProcessor(do_rescale=False, do_normalize=False), _uint8_hwc())
    assert pixels.dtype == np.float32


def test_without_crop_images_keep_their_own_sizes():
    processor = DualClipImageProcessor(do_center_crop=False)
    pixel_values = processor([_uint8_hwc(40, 80), _uint8_hwc(80, 40)])["pixel_values"]
    assert [p.shape for p in pixel_values] == [(3, 224, 448), (3, 448, 224)]
    with pytest.raises(ValueError, match="return_tensors='pt'.*same size"):
        processor([_uint8_hwc(40, 80), _uint8_hwc(80, 40)], return_tensors="pt")


def test_rescaling_floats_in_unit_range_warns(monkeypatch):
    messages = []
    monkeypatch.setattr(image_processing.logger, "warning_once", messages.append)
    DualClipImageProcessor()(_float01())
    assert any("do_rescale=False" in m for m in messages)
    messages.clear()
    DualClipImageProcessor()(_uint8_hwc())
    DualClipImageProcessor(do_rescale=False)(_float01())
    assert not messages


def test_save_and_load_round_trip(tmp_path):
    processor = DualClipImageProcessor(**OPENCLIP_STYLE, do_convert_rgb=False)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "DualClipImageProcessor"
    assert saved["size"] == {"shortest_edge": 256} and saved["resample"] == PIL.Image.Resampling.BILINEAR
    loaded = DualClipImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    image = _uint8_hwc(seed=8)
    np.testing.assert_array_equal(_pixels(loaded, image), _pixels(processor, image))
    overridden = DualClipImageProcessor.from_pretrained(tmp_path, crop_size={"height": 32, "width": 32})
    assert _pixels(overridden, image).shape == (1, 3, 32, 32)


def test_loads_folders_saved_by_transformers_clip(tmp_path):
    CLIPImageProcessorPil(**OPENCLIP_STYLE).save_pretrained(tmp_path / "new")
    (tmp_path / "legacy").mkdir()
    legacy = {  # preprocessor_config.json as shipped with openai/clip-vit-base-patch32
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD), "resample": 3, "size": 224,
    }  # fmt: skip
    (tmp_path / "legacy" / "preprocessor_config.json").write_text(json.dumps(legacy))
    image = _uint8_hwc(120, 90)
    for folder, reference in (("new", CLIPImageProcessorPil(**OPENCLIP_STYLE)), ("legacy", CLIPImageProcessorPil())):
        loaded = DualClipImageProcessor.from_pretrained(tmp_path / folder)
        np.testing.assert_allclose(_pixels(loaded, image), _pixels(reference, image), rtol=0, atol=TOLERANCE)


class _ImageProcessorTestConfig(PretrainedConfig):
    model_type = "dualclip_image_processor_test"


def _ensure_auto_image_processor_knows_dualclip():
    """`import dualclip` registers the class; until it does, register it under a test-only config."""
    registered = [cls for backends in IMAGE_PROCESSOR_MAPPING._extra_content.values() for cls in backends.values()]
    if DualClipImageProcessor not in registered:
        AutoImageProcessor.register(_ImageProcessorTestConfig, image_processor_classes={"pil": DualClipImageProcessor})


def test_auto_image_processor_loads_saved_folder(tmp_path):
    _ensure_auto_image_processor_knows_dualclip()
    DualClipImageProcessor(**OPENCLIP_STYLE).save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is DualClipImageProcessor
    assert loaded.crop_size == {"height": 240, "width": 240}


BAD_IMAGES = {
    "None": (None, ValueError, r"`images` is None"),
    "empty list": ([], ValueError, r"`images` is empty"),
    "empty batch": (np.zeros((0, 8, 8, 3), np.uint8), ValueError, r"`images` is an empty batch"),
    "zero-height PIL": (PIL.Image.new("RGB", (0, 5)), ValueError, r"`images\[0\]` is empty: height x width = 5 x 0"),
    "zero-width array": (np.zeros((0, 7, 3), np.uint8), ValueError, r"`images\[0\]` is empty"),
    "4-D array in a list": ([np.zeros((2, 8, 8, 3), np.uint8)], ValueError, r"`images\[0\]` is a 4-D.*one 4-D array"),
    "5-D array": (np.zeros((1, 2, 8, 8, 3), np.uint8), ValueError, r"`images` is a 5-D"),
    "1-D array": (np.zeros(8, np.uint8), ValueError, r"`images` is a 1-D"),
    "two channels": (np.zeros((8, 8, 2), np.uint8), ValueError, r"1, 3 or 4 channels"),
    "five channels CHW": (torch.zeros(5, 8, 8), ValueError, r"1, 3 or 4 channels"),
    "int": (3, TypeError, r"`images\[0\]` is a int; expected a PIL image"),
    "dict": ({"pixels": 1}, TypeError, r"`images\[0\]` is a dict"),
    "doubly nested list": ([[[_uint8_hwc()]]], TypeError, r"`images\[0\]` is a list"),
    "complex array": (np.zeros((8, 8, 3), np.complex64), TypeError, r"dtype complex64"),
    "missing file": ("no/such/file.png", ValueError, r"not an existing image file"),
    "URL": ("https://example.com/cat.png", ValueError, r"is a URL; dualclip never downloads"),
    "float out of range": (np.full((8, 8, 3), 1.5, np.float32), ValueError, r"fractional pixels must lie in \[0, 1\]"),
    "negative whole numbers": (np.full((8, 8, 3), -3.0), ValueError, r"whole-number pixels must lie in \[0, 255\]"),
    "float RGBA above 1": (np.full((8, 8, 4), 2.0), ValueError, r"RGBA pixels must lie in \[0, 1\]"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_images_raise_clear_errors(name):
    images, error, message = BAD_IMAGES[name]
    with pytest.raises(error, match=message):
        DualClipImageProcessor()(images)


@pytest.mark.parametrize("return_tensors", ["tf", "jax", "torch", 1])
def test_unknown_return_tensors_raise(return_tensors):
    with pytest.raises(ValueError, match="`return_tensors` must be 'pt'"):
        DualClipImageProcessor()(_uint8_hwc(), return_tensors=return_tensors)


BAD_SETTINGS = {
    "size with longest_edge": ({"size": {"shortest_edge": 224, "longest_edge": 300}}, ValueError, r"`size` must be"),
    "negative size": ({"size": -1}, ValueError, r"`size` must be a positive int"),
    "crop_size as string": ({"crop_size": "224"}, ValueError, r"`crop_size` must be"),
    "unknown resample": ({"resample": 42}, ValueError, r"`resample` must be a PIL resampling filter"),
    "zero std": ({"image_std": [0.2, 0.0, 0.2]}, ValueError, r"`image_std` must not contain zeros"),
    "mean as text": ({"image_mean": "imagenet"}, ValueError, r"`image_mean` must be a number or a sequence"),
    "flag as string": ({"do_resize": "yes"}, TypeError, r"`do_resize` must be True or False"),
    "zero rescale_factor": ({"rescale_factor": 0}, ValueError, r"`rescale_factor` must be a positive number"),
}


@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_bad_settings_raise_at_construction_and_per_call(name):
    settings, error, message = BAD_SETTINGS[name]
    with pytest.raises(error, match=message):
        DualClipImageProcessor(**settings)
    with pytest.raises(error, match=message):
        DualClipImageProcessor()(_uint8_hwc(), **settings)


def test_bad_input_data_format_and_channel_mismatch_raise():
    with pytest.raises(ValueError, match="`input_data_format` must be one of"):
        DualClipImageProcessor()(_uint8_hwc(), input_data_format="HWC")
    with pytest.raises(ValueError, match=r"has 4 channels but `image_mean` has 3 values"):
        DualClipImageProcessor(do_convert_rgb=False)(_uint8_hwc(channels=4))
    with pytest.raises(ValueError, match=r"has 2 channels in channels_last layout"):
        DualClipImageProcessor()(_uint8_hwc(3, 8, 2), input_data_format="channels_last")

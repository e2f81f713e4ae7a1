"""DualClipImageProcessor against the reference, transformers' CLIPImageProcessorPil, input kind by input kind,
and what dualclip adds: 16-bit images scaled instead of clipped, local files, errors that name the input."""

import json
import pathlib
import re
import struct
import zlib

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import AutoImageProcessor, PretrainedConfig
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

import dualclip.image_processing_dualclip as image_processing
from dualclip.image_processing_dualclip import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    DualClipImageProcessor,
    load_image_file,
    scale_to_8_bit,
)


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
    # 32-bit modes holding 8-bit values are left to PIL's own conversion, as in the reference.
    "I with values 0..255": lambda: PIL.Image.fromarray(_uint8_hwc()[:, :, 0].astype(np.int32)),
    "F with values 0..255": lambda: PIL.Image.fromarray(_rng().random((37, 53), dtype=np.float32) * 255),
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


def _uint16(height=37, width=53, seed=0):
    return _rng(seed).integers(0, 65536, (height, width), dtype=np.uint16)


def _write_16_bit_png(path, pixels):
    """A 16-bit PNG written with numpy and zlib: gray for (H, W) pixels, RGB for (H, W, 3)."""
    height, width = pixels.shape[:2]
    rows = pixels.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 before each row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 0 if pixels.ndim == 2 else 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def _reference_on_8_bit(gray_uint8, **settings):
    """What the reference gives for the 8-bit gray image a 16- or 32-bit image should become."""
    return _pixels(CLIPImageProcessorPil(**settings), PIL.Image.fromarray(gray_uint8))


def test_16_bit_png_files_are_scaled_to_8_bit_not_clipped(tmp_path):
    values = _uint16()
    path = tmp_path / "gray16.png"
    PIL.Image.fromarray(values).save(path)
    with PIL.Image.open(path) as image:
        assert image.mode == "I;16"
        opened = image.copy()
    expected = _reference_on_8_bit((values >> 8).astype(np.uint8))
    for source in (str(path), path, [str(path)], opened):
        np.testing.assert_allclose(_pixels(DualClipImageProcessor(), source), expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(np.asarray(load_image_file(path))[:, :, 0], values >> 8)
    # The reference converts to RGB directly, which clips at 255: almost every pixel comes out white.
    clipped = _pixels(CLIPImageProcessorPil(do_normalize=False), opened)
    assert (clipped == 1.0).mean() > 0.95


def test_16_bit_gray_and_rgb_pngs_of_one_picture_give_the_same_pixels(tmp_path):
    # Pillow itself reads 16-bit RGB PNGs as 8-bit RGB (the high byte); 16-bit gray PNGs open as I;16 and are
    # scaled the same way.
    values = _uint16(seed=1)
    _write_16_bit_png(tmp_path / "gray.png", values)
    _write_16_bit_png(tmp_path / "rgb.png", np.repeat(values[:, :, None], 3, axis=2))
    with PIL.Image.open(tmp_path / "gray.png") as gray, PIL.Image.open(tmp_path / "rgb.png") as rgb:
        assert (gray.mode, rgb.mode) == ("I;16", "RGB")
    processor = DualClipImageProcessor()
    np.testing.assert_array_equal(
        _pixels(processor, str(tmp_path / "gray.png")), _pixels(processor, str(tmp_path / "rgb.png"))
    )


@pytest.mark.parametrize("mode, byte_order", [("I;16", "<"), ("I;16L", "<"), ("I;16B", ">"), ("I;16N", "=")])
def test_every_16_bit_mode_keeps_the_high_byte(mode, byte_order):
    values = np.array([[0, 255, 256, 128 * 257, 65280, 65535]], dtype=np.uint16)
    image = PIL.Image.frombytes(mode, (values.shape[1], 1), values.astype(f"{byte_order}u2").tobytes())
    eight_bit = scale_to_8_bit(image)
    assert eight_bit.mode == "L"
    np.testing.assert_array_equal(np.asarray(eight_bit), values >> 8)


@pytest.mark.parametrize("widen", [lambda v: v * 257, lambda v: v << 8], ids=["v*257", "v<<8"])
def test_8_bit_values_stored_in_16_bits_come_back_exactly(widen):
    gray = _uint8_hwc()[:, :, 0]
    sixteen_bit = PIL.Image.fromarray(widen(gray.astype(np.uint16)))
    np.testing.assert_array_equal(_pixels(DualClipImageProcessor(), sixteen_bit), _reference_on_8_bit(gray))


THIRTY_TWO_BIT = {  # a mode I or F image, and the 8-bit values it stands for
    "I, 16-bit values": (lambda: _uint16().astype(np.int32), lambda: (_uint16() >> 8).astype(np.uint8)),
    "F, 16-bit values": (lambda: _uint16().astype(np.float32), lambda: (_uint16() >> 8).astype(np.uint8)),
    "F, values in [0, 1]": (lambda: _float01()[:, :, 0], lambda: (_float01()[:, :, 0] * 255).astype(np.uint8)),
}


@pytest.mark.parametrize("kind", list(THIRTY_TWO_BIT))
def test_32_bit_images_are_read_in_the_smallest_range_that_holds_them(kind):
    values, eight_bit = (make() for make in THIRTY_TWO_BIT[kind])
    np.testing.assert_allclose(
        _pixels(DualClipImageProcessor(), PIL.Image.fromarray(values)), _reference_on_8_bit(eight_bit),
        rtol=0, atol=TOLERANCE,
    )


@pytest.mark.parametrize(
    "values",
    [[[-5, 300]], [[0, 70000]], [[0.5, -0.25]], [[0.5, np.nan]], [[0.0, np.inf]]],
    ids=["I negative", "I above 65535", "F negative", "F nan", "F inf"],
)
def test_32_bit_images_outside_the_usual_ranges_raise(values):
    values = np.asarray(values, dtype=np.float32 if isinstance(values[0][1], float) else np.int32)
    with pytest.raises(ValueError, match=r"`images\[0\]`: a mode '(I|F)' image with values in .*Scale it"):
        DualClipImageProcessor()(PIL.Image.fromarray(values))


def test_file_paths_are_turned_upright_by_their_exif_orientation(tmp_path):
    image = PIL.Image.fromarray(_uint8_hwc(30, 50))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: the picture must be turned 90 degrees clockwise to be upright
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    np.testing.assert_array_equal(
        np.asarray(load_image_file(path)), np.asarray(image.transpose(PIL.Image.Transpose.ROTATE_270))
    )
    assert_matches_reference(str(path))  # transformers' load_image turns it the same way


def test_unreadable_files_raise_naming_the_file(tmp_path):
    good = tmp_path / "good.png"
    PIL.Image.fromarray(_uint8_hwc()).save(good)
    truncated, garbage = tmp_path / "truncated.png", tmp_path / "garbage.png"
    truncated.write_bytes(good.read_bytes()[:300])
    garbage.write_bytes(b"not an image")
    for path in (truncated, garbage):
        message = rf"`images\[1\]`: '{re.escape(str(path))}' is not an image file PIL can read \(.+\)"
        with pytest.raises(ValueError, match=message):
            DualClipImageProcessor()([str(good), str(path)])
        with pytest.raises(ValueError, match=rf"^'{re.escape(str(path))}' is not an image file PIL can read"):
            load_image_file(path)


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
    "shortest and longest edge": {"size": {"shortest_edge": 64, "longest_edge": 80}, "do_center_crop": False},
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
    # Value ranges are transformers' own checks; the message gets the name of the image in front.
    "float out of range": (np.full((8, 8, 3), 1.5), ValueError, r"`images\[0\]`: .*outside the range \[0, 1\]"),
    "negative whole numbers": (np.full((8, 8, 3), -3.0), ValueError, r"`images\[0\]`: .*outside the range \[0, 255\]"),
    "float RGBA above 1": (np.full((8, 8, 4), 2.0), ValueError, r"`images\[0\]`: .*outside the range \[0, 1\]"),
    "second image bad": ([_uint8_hwc(), np.full((8, 8, 3), 1.5)], ValueError, r"`images\[1\]`: .*outside the range"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_images_raise_clear_errors(name):
    images, error, message = BAD_IMAGES[name]
    with pytest.raises(error, match=message):
        DualClipImageProcessor()(images)


# Type errors come from transformers' validation of the settings (a strict-dataclass error naming the field).
SETTING_ERRORS = (ValueError, TypeError, StrictDataclassFieldValidationError)


@pytest.mark.parametrize("return_tensors", ["tf", "jax", "torch", "mlx", 1])
def test_unknown_return_tensors_raise(return_tensors):
    with pytest.raises(SETTING_ERRORS, match="return_tensors"):
        DualClipImageProcessor()(_uint8_hwc(), return_tensors=return_tensors)


BAD_SETTINGS = {
    "negative size": ({"size": -1}, r"`size` must hold positive ints"),
    "zero crop height": ({"crop_size": {"height": 0, "width": 8}}, r"`crop_size` must hold positive ints"),
    "crop_size as string": ({"crop_size": "224"}, r"crop_size"),
    "unknown resample": ({"resample": 42}, r"resampl"),
    "zero std": ({"image_std": [0.2, 0.0, 0.2]}, r"`image_std` must not contain zeros"),
    "mean as text": ({"image_mean": "imagenet"}, r"image_mean"),
    "flag as string": ({"do_resize": "yes"}, r"do_resize"),
    "zero rescale_factor": ({"rescale_factor": 0.0}, r"`rescale_factor` must be a positive number"),
}


@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_bad_settings_raise_at_construction_and_per_call(name):
    settings, message = BAD_SETTINGS[name]
    with pytest.raises(SETTING_ERRORS, match=message):
        DualClipImageProcessor(**settings)
    with pytest.raises(SETTING_ERRORS, match=message):
        DualClipImageProcessor()(_uint8_hwc(), **settings)


def test_bad_input_data_format_and_channel_mismatch_raise():
    with pytest.raises(ValueError, match="`input_data_format` must be one of"):
        DualClipImageProcessor()(_uint8_hwc(), input_data_format="HWC")
    with pytest.raises(ValueError, match=r"`images\[0\]`: mean must have 4 elements"):
        DualClipImageProcessor(do_convert_rgb=False)(_uint8_hwc(channels=4))
    with pytest.raises(ValueError, match=r"has 2 channels in channels_last layout"):
        DualClipImageProcessor()(_uint8_hwc(3, 8, 2), input_data_format="channels_last")

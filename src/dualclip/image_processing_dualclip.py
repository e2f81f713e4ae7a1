"""`DualClipImageProcessor`: CLIP image preprocessing with PIL and numpy only (no torchvision).

Each image goes through these steps, in this order; every step but the first can be switched off:

1. decode: PIL image, numpy array, torch tensor or local file path -> channels-first numpy array,
   converted to RGB when `do_convert_rgb` (transparency is composited onto white, grayscale is repeated);
2. resize: shortest edge to `size["shortest_edge"]` (long edge `int(shortest * long / short)`), or exactly
   to `size["height"]` x `size["width"]`, with PIL resampling (bicubic by default);
3. centre crop to `crop_size` (zero padding where the image is smaller);
4. rescale by `rescale_factor` (1/255);
5. normalize with the per-channel `image_mean` and `image_std`.

Every image comes out as a float32 `(3, H, W)` array. The pixels equal those of transformers'
`CLIPImageProcessorPil` with the same settings, input kind by input kind, which is also why the rules below
read the way they do:

- Arrays and tensors may be `(H, W)`, `(C, H, W)` or `(H, W, C)` with C in 1, 3, 4; a single 4-D array or
  tensor is a batch. When both ends could be the channel axis, channels-first wins (pass
  `input_data_format` to say otherwise).
- uint8 and other integer pixels are 0..255. Floating-point pixels whose values are all whole numbers are
  also read as 0..255; other floating-point pixels must lie in [0, 1] and are taken as already rescaled,
  so pass `do_rescale=False` for them (a warning says so when you forget). Before PIL resizing, such [0, 1]
  pixels are quantized to 8 bits (`x * 255`, truncated) and divided by 255 afterwards.
- 16- and 32-bit PIL images are clipped to 255 by the RGB conversion, as in OpenAI CLIP and transformers.
- A file path is opened locally, turned upright by its EXIF orientation and converted with
  `PIL.Image.convert("RGB")`, which drops transparency instead of compositing it. URLs are never fetched.
"""

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.utils import logging


logger = logging.get_logger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_CHANNEL_COUNTS = (1, 3, 4)
_INPUT_DATA_FORMATS = ("channels_first", "channels_last")
_RETURN_TENSORS = ("np", "pt")
_SUPPORTED_SIZES = '{"shortest_edge": int} or {"height": int, "width": int}'
_HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass(frozen=True)
class _Settings:
    """The validated settings of one `preprocess` call."""

    do_convert_rgb: bool
    do_resize: bool
    size: dict
    resample: PIL.Image.Resampling
    do_center_crop: bool
    crop_size: dict
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple
    image_std: tuple
    input_data_format: str | None


class DualClipImageProcessor(BaseImageProcessor):
    r"""
    CLIP image processor: resize, centre crop, RGB conversion, rescale and normalize, using PIL and numpy.

    Defaults are those of OpenAI CLIP: bicubic resize of the shortest edge to 224, 224x224 centre crop,
    `OPENAI_CLIP_MEAN`/`OPENAI_CLIP_STD` normalization. `save_pretrained`/`from_pretrained` read and write
    the same `preprocessor_config.json` keys as transformers' `CLIPImageProcessor`, so CLIP folders load as is.

    Args:
        do_resize (`bool`, defaults to `True`): whether to resize.
        size (`dict` or `int`, defaults to `{"shortest_edge": 224}`): `{"shortest_edge": n}` keeps the aspect
            ratio, `{"height": h, "width": w}` resizes to exactly that; an int means `{"shortest_edge": n}`.
        resample (`PIL.Image.Resampling` or `int`, defaults to `BICUBIC`): the PIL resampling filter.
        do_center_crop (`bool`, defaults to `True`): whether to centre crop after resizing.
        crop_size (`dict`, `int` or `(height, width)`, defaults to `{"height": 224, "width": 224}`).
        do_rescale (`bool`, defaults to `True`): whether to multiply pixels by `rescale_factor`.
        rescale_factor (`float`, defaults to `1/255`).
        do_normalize (`bool`, defaults to `True`): whether to apply `(x - image_mean) / image_std`.
        image_mean (`float` or sequence of floats, defaults to `OPENAI_CLIP_MEAN`).
        image_std (`float` or sequence of floats, defaults to `OPENAI_CLIP_STD`).
        do_convert_rgb (`bool`, defaults to `True`): whether to convert every image to 3-channel RGB.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size: dict | int | None = None,
        resample: PIL.Image.Resampling | int = PIL.Image.Resampling.BICUBIC,
        do_center_crop: bool = True,
        crop_size: dict | int | Sequence[int] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_rgb: bool = True,
        **kwargs,
    ):
        # Older CLIP configs store `size: 224` with `default_to_square: false`; an int size is read as the
        # shortest edge unless the config explicitly asks for a square.
        if kwargs.pop("default_to_square", False) and isinstance(size, int):
            size = {"height": size, "width": size}
        kwargs.pop("image_processor_type", None)  # written by `to_dict`, not a setting
        super().__init__(**kwargs)
        self.do_resize = _check_flag(do_resize, "do_resize")
        self.size = _standardize_size({"shortest_edge": 224} if size is None else size)
        self.resample = _standardize_resample(resample)
        self.do_center_crop = _check_flag(do_center_crop, "do_center_crop")
        self.crop_size = _standardize_crop_size({"height": 224, "width": 224} if crop_size is None else crop_size)
        self.do_rescale = _check_flag(do_rescale, "do_rescale")
        self.rescale_factor = _check_rescale_factor(rescale_factor)
        self.do_normalize = _check_flag(do_normalize, "do_normalize")
        image_mean = OPENAI_CLIP_MEAN if image_mean is None else image_mean
        image_std = OPENAI_CLIP_STD if image_std is None else image_std
        self.image_mean = list(_standardize_channel_values(image_mean, "image_mean"))
        self.image_std = list(_standardize_channel_values(image_std, "image_std"))
        self.do_convert_rgb = _check_flag(do_convert_rgb, "do_convert_rgb")

    def preprocess(
        self,
        images,
        *,
        do_resize: bool | None = None,
        size: dict | int | None = None,
        resample: PIL.Image.Resampling | int | None = None,
        do_center_crop: bool | None = None,
        crop_size: dict | int | Sequence[int] | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_rgb: bool | None = None,
        input_data_format: str | None = None,
        return_tensors: str | None = None,
    ) -> BatchFeature:
        """
        Turn one image or a batch of images into `pixel_values`.

        Args:
            images: a PIL image, a numpy array or torch tensor (`(H, W)`, `(C, H, W)` or `(H, W, C)`; 4-D means
                a batch), a local file path, or a list of these (one level of nested lists is flattened).
            do_resize, size, resample, do_center_crop, crop_size, do_rescale, rescale_factor, do_normalize,
            image_mean, image_std, do_convert_rgb: override the processor's settings for this call.
            input_data_format (`"channels_first"` or `"channels_last"`, *optional*): layout of array/tensor
                inputs; inferred from the shape when not given.
            return_tensors (`"pt"`, `"np"` or `None`): `"pt"` gives a float32 `torch.Tensor` of shape
                `(batch, 3, H, W)`, `"np"` a numpy array of that shape, `None` a list of `(3, H, W)` arrays.

        Returns:
            `BatchFeature` with the single key `pixel_values`.
        """
        settings = self._settings_for_call(
            input_data_format,
            do_resize=do_resize,
            size=size,
            resample=resample,
            do_center_crop=do_center_crop,
            crop_size=crop_size,
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
            do_convert_rgb=do_convert_rgb,
        )
        _check_return_tensors(return_tensors)
        pixel_values = [
            _transform_image(_decode_image(image, settings, index), settings, index)
            for index, image in enumerate(_flatten_images(images))
        ]
        return BatchFeature(data={"pixel_values": _batch(pixel_values, return_tensors)})

    def fetch_images(self, image_url_or_urls):
        """Open local image file paths (also inside lists); everything else is returned unchanged.

        Processors call this before `preprocess`. Unlike the transformers default it never downloads:
        URLs raise a `ValueError`.
        """
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, (str, os.PathLike)):
            return _open_image_file(image_url_or_urls, "images")
        return image_url_or_urls

    def _settings_for_call(self, input_data_format: str | None, **overrides) -> _Settings:
        """Merge per-call overrides into the stored settings and validate the result."""
        value = {name: getattr(self, name) if given is None else given for name, given in overrides.items()}
        if input_data_format is not None and input_data_format not in _INPUT_DATA_FORMATS:
            raise ValueError(
                f"`input_data_format` must be one of {_INPUT_DATA_FORMATS} or None, got {input_data_format!r}."
            )
        return _Settings(
            do_convert_rgb=_check_flag(value["do_convert_rgb"], "do_convert_rgb"),
            do_resize=_check_flag(value["do_resize"], "do_resize"),
            size=_standardize_size(value["size"]),
            resample=_standardize_resample(value["resample"]),
            do_center_crop=_check_flag(value["do_center_crop"], "do_center_crop"),
            crop_size=_standardize_crop_size(value["crop_size"]),
            do_rescale=_check_flag(value["do_rescale"], "do_rescale"),
            rescale_factor=_check_rescale_factor(value["rescale_factor"]),
            do_normalize=_check_flag(value["do_normalize"], "do_normalize"),
            image_mean=_standardize_channel_values(value["image_mean"], "image_mean"),
            image_std=_standardize_channel_values(value["image_std"], "image_std"),
            input_data_format=None if input_data_format is None else str(input_data_format),
        )


# ----------------------------------------------------------------------------------------------------------
# Settings validation


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def _standardize_size(size) -> dict:
    """`{"shortest_edge": n}` or `{"height": h, "width": w}`; an int is a shortest edge."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return {"shortest_edge": _positive_int(size, "size")}
    if isinstance(size, Mapping):
        if set(size) == {"shortest_edge"}:
            return {"shortest_edge": _positive_int(size["shortest_edge"], "size['shortest_edge']")}
        if set(size) == {"height", "width"}:
            return {
                "height": _positive_int(size["height"], "size['height']"),
                "width": _positive_int(size["width"], "size['width']"),
            }
    raise ValueError(f"`size` must be {_SUPPORTED_SIZES} or an int (shortest edge), got {size!r}.")


def _standardize_crop_size(crop_size) -> dict:
    """`{"height": h, "width": w}`; an int is a square, a pair is `(height, width)`."""
    if isinstance(crop_size, (int, np.integer)) and not isinstance(crop_size, bool):
        side = _positive_int(crop_size, "crop_size")
        return {"height": side, "width": side}
    if isinstance(crop_size, Sequence) and not isinstance(crop_size, str) and len(crop_size) == 2:
        crop_size = {"height": crop_size[0], "width": crop_size[1]}
    if isinstance(crop_size, Mapping) and set(crop_size) == {"height", "width"}:
        return {
            "height": _positive_int(crop_size["height"], "crop_size['height']"),
            "width": _positive_int(crop_size["width"], "crop_size['width']"),
        }
    raise ValueError(
        f'`crop_size` must be {{"height": int, "width": int}}, an int or a (height, width) pair, got {crop_size!r}.'
    )


def _standardize_resample(resample) -> PIL.Image.Resampling:
    try:
        if isinstance(resample, bool):
            raise ValueError
        return PIL.Image.Resampling(resample)
    except (ValueError, TypeError):
        names = ", ".join(f"{member.name}={member.value}" for member in PIL.Image.Resampling)
        raise ValueError(f"`resample` must be a PIL resampling filter ({names}), got {resample!r}.") from None


def _check_rescale_factor(value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"`rescale_factor` must be a positive number, got {value!r}.")
    return float(value)


def _standardize_channel_values(values, name: str) -> tuple:
    """A tuple of finite floats, one per channel or a single one for all channels."""
    if isinstance(values, Real) and not isinstance(values, bool):
        values = (values,)
    if (
        isinstance(values, (Sequence, np.ndarray))
        and not isinstance(values, str)
        and len(values) > 0
        and all(isinstance(v, Real) and not isinstance(v, bool) and np.isfinite(v) for v in values)
    ):
        values = tuple(float(v) for v in values)
        if name == "image_std" and any(v == 0 for v in values):
            raise ValueError(f"`image_std` must not contain zeros, got {values}.")
        return values
    raise ValueError(f"`{name}` must be a number or a sequence of numbers, one per channel, got {values!r}.")


def _check_return_tensors(return_tensors) -> None:
    if return_tensors is not None and return_tensors not in _RETURN_TENSORS:
        raise ValueError(
            f"`return_tensors` must be 'pt' (torch), 'np' (numpy) or None (list of arrays), got {return_tensors!r}."
        )


# ----------------------------------------------------------------------------------------------------------
# Input structure and decoding


def _describe(image) -> str:
    shape = getattr(image, "shape", None)
    return f"{type(image).__name__} of shape {tuple(shape)}" if shape is not None else type(image).__name__


def _is_array(image) -> bool:
    return isinstance(image, (np.ndarray, torch.Tensor))


def _flatten_images(images) -> list:
    """A flat list of single images: a list (one level of nesting allowed), a 4-D batch or one image."""
    expected = "a PIL image, a numpy array, a torch tensor, a local file path, or a list of them"
    if images is None:
        raise ValueError(f"`images` is None; expected {expected}.")
    if isinstance(images, (list, tuple)):
        flat = []
        for item in images:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        if not flat:
            raise ValueError(f"`images` is empty; expected {expected}.")
        for index, item in enumerate(flat):
            if _is_array(item) and item.ndim not in (2, 3):
                raise ValueError(
                    f"`images[{index}]` is a {item.ndim}-D {_describe(item)}; inside a list every image must be "
                    "2-D (H, W) or 3-D (C, H, W) / (H, W, C). Pass a batch as one 4-D array, not a list of them."
                )
        return flat
    if _is_array(images):
        if images.ndim == 4:
            if images.shape[0] == 0:
                raise ValueError(f"`images` is an empty batch ({_describe(images)}).")
            return list(images)
        if images.ndim not in (2, 3):
            raise ValueError(
                f"`images` is a {images.ndim}-D {_describe(images)}; expected 2-D (H, W), 3-D (C, H, W) or "
                "(H, W, C), or 4-D (a batch)."
            )
    return [images]


def _open_image_file(path, name: str) -> PIL.Image.Image:
    """Open a local image file the way transformers' `load_image` does, without any network access."""
    text = os.fspath(path)
    if isinstance(text, str) and text.startswith(("http://", "https://")):
        raise ValueError(
            f"`{name}`: {text!r} is a URL; dualclip never downloads. Fetch the image yourself and pass it as a "
            "PIL image or array."
        )
    if not os.path.isfile(text):
        raise ValueError(
            f"`{name}`: {text!r} is not an existing image file (text goes to the `text` argument of a processor)."
        )
    with PIL.Image.open(text) as image:
        return PIL.ImageOps.exif_transpose(image).convert("RGB")


def _decode_image(image, settings: _Settings, index: int) -> np.ndarray:
    """One input image as a channels-first numpy array (RGB when `do_convert_rgb`)."""
    name = f"images[{index}]"
    if isinstance(image, (str, os.PathLike)):
        image = _open_image_file(image, name)
    if isinstance(image, PIL.Image.Image):
        array = _pil_to_channels_first(image, settings.do_convert_rgb, name)
    elif _is_array(image):
        array = _array_to_channels_first(_as_numpy(image, name), settings.input_data_format, name)
        if settings.do_convert_rgb:
            array = _channels_first_to_rgb(array, name)
    else:
        raise TypeError(
            f"`{name}` is a {_describe(image)}; expected a PIL image, a numpy array, a torch tensor or a local "
            "file path."
        )
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"`{name}` is empty: height x width = {array.shape[1]} x {array.shape[2]}.")
    return array


def _pil_to_channels_first(image: PIL.Image.Image, convert_rgb: bool, name: str) -> np.ndarray:
    if convert_rgb:
        _warn_if_clipped_by_rgb_conversion(image, name)
        image = _pil_to_rgb(image)
    array = np.asarray(image)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _pil_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB copy of a PIL image; any transparency is composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _warn_if_clipped_by_rgb_conversion(image: PIL.Image.Image, name: str) -> None:
    if image.mode in _HIGH_BIT_DEPTH_MODES and image.width and image.height and image.getextrema()[1] > 255:
        logger.warning_once(
            f"`{name}`: a {image.mode!r} image has values above 255; converting it to RGB clips them to 255 "
            "(as OpenAI CLIP and transformers do). Scale it to 8 bits first to keep its contrast."
        )


def _as_numpy(image, name: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
            image = image.float()
        image = image.numpy()
    if image.dtype == np.bool_:
        return image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"`{name}` has dtype {image.dtype}; expected integer or floating-point pixels.")
    return image


def _array_to_channels_first(array: np.ndarray, input_data_format: str | None, name: str) -> np.ndarray:
    if array.ndim == 2:
        return array[None]
    layout = input_data_format or _infer_layout(array.shape, name)
    channels_first = array if layout == "channels_first" else array.transpose(2, 0, 1)
    if channels_first.shape[0] not in _CHANNEL_COUNTS:
        raise ValueError(
            f"`{name}` has {channels_first.shape[0]} channels in {layout} layout (shape {array.shape}); "
            "expected 1, 3 or 4."
        )
    return channels_first


def _infer_layout(shape: tuple, name: str) -> str:
    first, last = shape[0] in _CHANNEL_COUNTS, shape[-1] in _CHANNEL_COUNTS
    if first and last:
        logger.warning_once(
            f"`{name}`: shape {shape} could be channels-first or channels-last; assuming channels-first. "
            "Pass input_data_format to choose."
        )
    if first:
        return "channels_first"
    if last:
        return "channels_last"
    raise ValueError(
        f"`{name}` has shape {shape}: neither the first nor the last axis has 1, 3 or 4 channels. "
        "Expected (C, H, W) or (H, W, C) with C in 1, 3, 4."
    )


def _channels_first_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """Grayscale is repeated to three channels; RGBA is composited onto white."""
    if array.shape[0] == 1:
        return np.repeat(array, 3, axis=0)
    if array.shape[0] == 4:
        return _composite_onto_white(array, name)
    return array


def _composite_onto_white(rgba: np.ndarray, name: str) -> np.ndarray:
    if np.issubdtype(rgba.dtype, np.floating):
        if rgba.min() < 0 or rgba.max() > 1:
            raise ValueError(
                f"`{name}`: floating-point RGBA pixels must lie in [0, 1], got [{rgba.min()}, {rgba.max()}]."
            )
        white = 1.0
    else:
        white = 255
    alpha = rgba[3:4] / white
    composite = alpha * rgba[:3] + (1 - alpha) * white
    if white == 255:
        composite = np.round(composite)
    return composite.astype(rgba.dtype)


def _looks_already_rescaled(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) and array.min() >= 0 and array.max() <= 1


# ----------------------------------------------------------------------------------------------------------
# Pipeline steps


def _transform_image(array: np.ndarray, settings: _Settings, index: int) -> np.ndarray:
    """Resize, crop, rescale and normalize one channels-first image; returns float32 (C, H, W)."""
    if settings.do_rescale and _looks_already_rescaled(array):
        logger.warning_once(
            "`images`: floating-point pixels in [0, 1] look already rescaled, but do_rescale=True scales them "
            "by rescale_factor again. Pass do_rescale=False for such inputs."
        )
    if settings.do_resize:
        height, width = _resized_height_width(array.shape[1], array.shape[2], settings.size)
        array = _resize(array, height, width, settings.resample, f"images[{index}]")
    if settings.do_center_crop:
        array = _center_crop(array, settings.crop_size["height"], settings.crop_size["width"])
    if settings.do_rescale:
        array = _rescale(array, settings.rescale_factor)
    if settings.do_normalize:
        array = _normalize(array, settings.image_mean, settings.image_std, f"images[{index}]")
    return array.astype(np.float32, copy=False)


def _resized_height_width(height: int, width: int, size: dict) -> tuple[int, int]:
    if "shortest_edge" not in size:
        return size["height"], size["width"]
    shortest = size["shortest_edge"]
    if width <= height:
        return int(shortest * height / width), shortest
    return shortest, int(shortest * width / height)


def _resize(array: np.ndarray, height: int, width: int, resample: PIL.Image.Resampling, name: str) -> np.ndarray:
    pixels, from_unit_range = _to_uint8_for_pil(array, name)
    channels_last = pixels.transpose(1, 2, 0)
    if channels_last.shape[2] == 1:
        channels_last = channels_last[:, :, 0]
    resized = np.asarray(PIL.Image.fromarray(channels_last).resize((width, height), resample=resample))
    resized = resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
    if from_unit_range:
        return _rescale(resized, 1 / 255)
    return resized


def _to_uint8_for_pil(array: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """8-bit pixels for PIL, and whether they were scaled up from [0, 1] (and must be scaled back)."""
    if array.dtype == np.uint8:
        return array, False
    # Tolerance and truncation follow transformers' `to_pil_image`, so [0, 1] floats quantize identically.
    if np.allclose(array, np.trunc(array)):
        if array.min() < 0 or array.max() > 255:
            raise ValueError(
                f"`{name}`: whole-number pixels must lie in [0, 255], got [{array.min()}, {array.max()}]."
            )
        return array.astype(np.uint8), False
    if array.min() < 0 or array.max() > 1:
        raise ValueError(
            f"`{name}`: fractional pixels must lie in [0, 1] (or be whole numbers in [0, 255]), got "
            f"[{array.min()}, {array.max()}]."
        )
    return (array.astype(np.float64) * 255).astype(np.float32).astype(np.uint8), True


def _center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop to (height, width); a side smaller than the crop is centred in zeros instead."""
    src_top, dst_top, rows = _centred_span(array.shape[1], height)
    src_left, dst_left, cols = _centred_span(array.shape[2], width)
    cropped = np.zeros((array.shape[0], height, width), dtype=array.dtype)
    cropped[:, dst_top : dst_top + rows, dst_left : dst_left + cols] = array[
        :, src_top : src_top + rows, src_left : src_left + cols
    ]
    return cropped


def _centred_span(length: int, target: int) -> tuple[int, int, int]:
    """(source start, destination start, count) that centre `length` pixels on `target` pixels."""
    if length >= target:
        return (length - target) // 2, 0, target
    return 0, (target - length + 1) // 2, length


def _rescale(array: np.ndarray, factor: float) -> np.ndarray:
    return (array.astype(np.float64) * factor).astype(np.float32)


def _normalize(array: np.ndarray, mean: tuple, std: tuple, name: str) -> np.ndarray:
    channels = array.shape[0]
    mean = _per_channel(mean, channels, "image_mean", name)
    std = _per_channel(std, channels, "image_std", name)
    return (array.astype(np.float32, copy=False) - mean) / std


def _per_channel(values: tuple, channels: int, setting: str, name: str) -> np.ndarray:
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(
            f"`{name}` has {channels} channels but `{setting}` has {len(values)} values; pass do_convert_rgb=True "
            f"for RGB output or give one {setting} value per channel."
        )
    return np.asarray(values, dtype=np.float32)[:, None, None]


def _batch(pixel_values: list[np.ndarray], return_tensors: str | None):
    if return_tensors is None:
        return pixel_values
    shapes = {array.shape for array in pixel_values}
    if len(shapes) > 1:
        raise ValueError(
            f"`return_tensors={return_tensors!r}` needs every image to come out the same size, got "
            f"{sorted(shapes)}; enable do_center_crop, use size={{'height': h, 'width': w}}, or pass "
            "return_tensors=None for a list."
        )
    stacked = np.stack(pixel_values)
    return torch.from_numpy(stacked) if return_tensors == "pt" else stacked


__all__ = ["DualClipImageProcessor", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]

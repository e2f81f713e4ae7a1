"""`DualClipImageProcessor`: transformers' CLIP image processor on its PIL backend, plus what it lacks.

The pipeline (RGB conversion, resize, centre crop, rescale, normalize) is transformers' own `PilBackend`,
through `CLIPImageProcessorPil`: the same settings give the same pixels, and `preprocessor_config.json` files
are shared both ways. dualclip adds, before the images reach that pipeline:

- local file paths are opened (turned upright by their EXIF orientation, then `convert("RGB")`, as
  transformers' `load_image` does); URLs are never fetched;
- 16-bit images are scaled to 8 bits instead of being clipped at 255 (see `scale_to_8_bit`);
- 2-D `(H, W)` arrays and tensors are grayscale images; bfloat16, CUDA and `requires_grad` tensors are accepted;
- a bad input raises an error that names it (`images[3]`), its shape and what was expected;
- floating-point pixels in [0, 1] with `do_rescale=True` log a warning (they would be rescaled twice);
- `pixel_values` are always float32, also where the stock processor keeps uint8 (no rescale, no normalize).
"""

import contextlib
import os
import struct
import zlib

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from huggingface_hub.dataclasses import validate_typed_dict
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN as _OPENAI_CLIP_MEAN
from transformers.image_utils import OPENAI_CLIP_STD as _OPENAI_CLIP_STD
from transformers.image_utils import ChannelDimension
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.utils import logging


logger = logging.get_logger(__name__)

OPENAI_CLIP_MEAN = tuple(_OPENAI_CLIP_MEAN)
OPENAI_CLIP_STD = tuple(_OPENAI_CLIP_STD)

_CHANNEL_COUNTS = (1, 3, 4)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Errors PIL raises for files it cannot decode: truncated or corrupt data, unknown formats, decompression bombs.
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, PIL.Image.DecompressionBombError
)


class DualClipImageProcessor(CLIPImageProcessorPil):
    r"""
    CLIP image processor: RGB conversion, resize, centre crop, rescale and normalize, with PIL and numpy.

    A subclass of transformers' `CLIPImageProcessorPil` with the same settings, defaults (OpenAI CLIP: bicubic
    resize of the shortest edge to 224, 224x224 centre crop, `OPENAI_CLIP_MEAN`/`OPENAI_CLIP_STD`) and
    `preprocessor_config.json` keys, so CLIP folders load as they are and the pixels equal the stock ones.

    Inputs: PIL images (any mode; transparency is composited onto white, 16-bit modes are scaled, see
    `scale_to_8_bit`), numpy arrays or torch tensors as `(H, W)`, `(C, H, W)` or `(H, W, C)` with 1, 3 or 4
    channels (4-D: a batch), local file paths (see `load_image_file`), or a list of these (one level of nesting).
    Integer pixels are 0..255; floating-point pixels in [0, 1] are already rescaled, so pass `do_rescale=False`.
    When both the first and last axis could hold the channels, channels-first wins; pass `input_data_format`.

    Settings (at construction, or per call): `do_resize`, `size` (`{"shortest_edge": n}`, `{"height": h,
    "width": w}`, ...; an int is a shortest edge), `resample`, `do_center_crop`, `crop_size`, `do_rescale`,
    `rescale_factor`, `do_normalize`, `image_mean`, `image_std`, `do_convert_rgb`; per call also
    `input_data_format` and `return_tensors` (`"pt"`, `"np"`, or `None` for a list of `(3, H, W)` arrays).
    Invalid settings raise at construction as well as per call. `pixel_values` are float32.
    """

    def __init__(self, **kwargs):
        # The stock class checks settings only when called; a bad value in a config should fail when it loads.
        settings = {key: value for key, value in kwargs.items() if key in self.valid_kwargs.__annotations__}
        validate_typed_dict(self.valid_kwargs, settings)
        super().__init__(**kwargs)
        self._validate_preprocess_kwargs(**{name: getattr(self, name) for name in self._valid_kwargs_names})

    def fetch_images(self, image_url_or_urls):
        """Opens local image file paths (also inside lists) with `load_image_file`; other inputs pass unchanged.

        Processors call this before `preprocess`. Unlike the transformers default it never downloads: URLs raise
        a `ValueError`.
        """
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, (str, os.PathLike)):
            return _load_image_file(image_url_or_urls, "`images`")
        return image_url_or_urls

    def _validate_preprocess_kwargs(self, size=None, crop_size=None, resample=None, rescale_factor=None,
                                    image_std=None, return_tensors=None, **kwargs):
        super()._validate_preprocess_kwargs(size=size, crop_size=crop_size, resample=resample,
                                            rescale_factor=rescale_factor, image_std=image_std, **kwargs)
        # Values the stock class accepts here and only fails on later (PIL resize) or turns into inf/0 pixels.
        for name, value in (("size", size), ("crop_size", crop_size)):
            if value is not None and any(side <= 0 for side in dict(value).values()):
                raise ValueError(f"`{name}` must hold positive ints, got {dict(value)}.")
        if isinstance(resample, int) and resample not in [member.value for member in PIL.Image.Resampling]:
            names = ", ".join(f"{member.name}={member.value}" for member in PIL.Image.Resampling)
            raise ValueError(f"`resample` must be a PIL resampling filter ({names}), got {resample!r}.")
        if rescale_factor is not None and rescale_factor <= 0:
            raise ValueError(f"`rescale_factor` must be a positive number, got {rescale_factor!r}.")
        if image_std is not None and np.any(np.asarray(image_std) == 0):
            raise ValueError(f"`image_std` must not contain zeros, got {image_std}.")
        if return_tensors is not None and return_tensors not in ("pt", "np"):
            raise ValueError(
                f"`return_tensors` must be 'pt' (torch), 'np' (numpy) or None (list of arrays), got {return_tensors!r}."
            )

    def _prepare_image_like_inputs(self, images, *args, expected_ndims: int = 3, **kwargs):
        # Each input is checked and brought to a form the PIL backend reads as stock does, one by one so that
        # every error names the input it is about.
        prepared = []
        for index, image in enumerate(_flatten(images)):
            name = f"`images[{index}]`"
            image = _supported_image(image, name, kwargs)
            with _naming_errors(name):
                prepared += super()._prepare_image_like_inputs([image], *args, expected_ndims=expected_ndims, **kwargs)
        return prepared

    def _preprocess(self, images, *args, return_tensors=None, do_pad=None, pad_size=None, **kwargs) -> BatchFeature:
        pixel_values = []
        for index, image in enumerate(images):
            with _naming_errors(f"`images[{index}]`"):
                batch = super()._preprocess([image], *args, return_tensors=None, do_pad=False, pad_size=None, **kwargs)
            pixel_values += batch["pixel_values"]
        if do_pad:
            pixel_values = self.pad(pixel_values, pad_size=pad_size)
        pixel_values = [array.astype(np.float32, copy=False) for array in pixel_values]
        shapes = sorted({array.shape for array in pixel_values})
        if return_tensors is not None and len(shapes) > 1:
            raise ValueError(
                f"`return_tensors={return_tensors!r}` needs every image to come out the same size, got {shapes}; "
                "enable do_center_crop, use size={'height': h, 'width': w}, or pass return_tensors=None for a list."
            )
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)


def scale_to_8_bit(image: PIL.Image.Image, name: str = "image") -> PIL.Image.Image:
    """An 8-bit (`"L"`) copy of a 16- or 32-bit single-channel PIL image; other images are returned unchanged.

    PIL's conversion to RGB clips such images at 255, which turns most 16-bit images white. Instead:

    - 16-bit modes (`I;16`, `I;16L`, `I;16B`, `I;16N`): `value >> 8`, the high byte. This is how Pillow reads
      16-bit RGB PNGs, torchvision's `to_dtype` and scikit-image's `img_as_ubyte` convert 16-bit data, so a
      16-bit gray PNG and a 16-bit RGB PNG of the same picture give the same pixels, and an 8-bit value `v`
      stored as 16 bits (`v * 257` or `v << 8`) comes back as `v`.
    - 32-bit modes (`I` integers, `F` floats) do not say their range, so the smallest usual range that holds
      every value is taken: [0, 1] (`F` only: `value * 255`, truncated, as transformers quantizes floats in
      [0, 1]), [0, 255] (8-bit values: unchanged, PIL's own conversion), [0, 65535] (16-bit values, as Pillow
      opens some 16-bit files: `value / 256`, truncated, the same as `>> 8`). Negative, larger or non-finite
      values raise a `ValueError` naming `name`: scale such images yourself.
    """
    if image.mode not in _SIXTEEN_BIT_MODES and image.mode not in ("I", "F"):
        return image
    values = np.asarray(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        full_scale = 65535
    else:
        finite = values.size == 0 or np.isfinite(values).all()
        low, high = (values.min(), values.max()) if values.size else (0, 0)
        ranges = (1, 255, 65535) if image.mode == "F" else (255, 65535)
        full_scale = next((top for top in ranges if finite and low >= 0 and high <= top), None)
        if full_scale is None:
            raise ValueError(
                f"{name}: a mode {image.mode!r} image with values in [{low}, {high}] has no usual pixel range; "
                "expected values in [0, 255] or [0, 65535] (or [0, 1] for mode 'F'). Scale it to 8 bits first."
            )
        if full_scale == 255:
            return image
    eight_bit = values // 256 if full_scale == 65535 else values * 255
    return PIL.Image.fromarray(eight_bit.astype(np.uint8))


def load_image_file(path) -> PIL.Image.Image:
    """Opens a local image file as an RGB PIL image, the way `DualClipImageProcessor` reads file paths.

    Like transformers' `load_image`: turned upright by its EXIF orientation and converted with `convert("RGB")`
    (transparency is dropped, not composited); 16-bit images are first scaled with `scale_to_8_bit`. Never
    downloads. Raises `ValueError` naming the path for a URL, a missing file, or a file PIL cannot decode.
    """
    return _load_image_file(path, None)


def _load_image_file(path, name: str | None) -> PIL.Image.Image:
    text = os.fsdecode(os.fspath(path))
    prefix = f"{name}: {text!r}" if name else repr(text)
    if text.startswith(("http://", "https://")):
        raise ValueError(
            f"{prefix} is a URL; dualclip never downloads. Fetch the image yourself and pass it as a PIL image or "
            "array."
        )
    if not os.path.isfile(text):
        raise ValueError(f"{prefix} is not an existing image file.")
    try:
        with PIL.Image.open(text) as file:
            file.load()
            image = PIL.ImageOps.exif_transpose(file)
    except _DECODE_ERRORS as error:
        raise ValueError(f"{prefix} is not an image file PIL can read ({error}).") from None
    return scale_to_8_bit(image, prefix).convert("RGB")


# ----------------------------------------------------------------------------------------------------------
# Checking and converting inputs


@contextlib.contextmanager
def _naming_errors(name: str):
    """Prefixes `name` to a `ValueError` raised inside: transformers' own messages do not say which image failed."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from error


def _describe(image) -> str:
    shape = getattr(image, "shape", None)
    return f"{type(image).__name__} of shape {tuple(shape)}" if shape is not None else type(image).__name__


def _is_array(image) -> bool:
    return isinstance(image, (np.ndarray, torch.Tensor))


def _flatten(images) -> list:
    """A flat list of single images: a list (one level of nesting allowed), a 4-D batch or one image."""
    expected = "a PIL image, a numpy array, a torch tensor, a local file path, or a list of them"
    if images is None:
        raise ValueError(f"`images` is None; expected {expected}.")
    if isinstance(images, (list, tuple)):
        flat = [image for item in images for image in (item if isinstance(item, (list, tuple)) else [item])]
        if not flat:
            raise ValueError(f"`images` is empty; expected {expected}.")
        for index, item in enumerate(flat):
            if _is_array(item) and item.ndim not in (2, 3):
                raise ValueError(
                    f"`images[{index}]` is a {item.ndim}-D {_describe(item)}; inside a list every image must be "
                    "2-D (H, W) or 3-D (C, H, W) / (H, W, C). Pass a batch as one 4-D array, not a list of them."
                )
        return flat
    if _is_array(images) and images.ndim == 4:
        if images.shape[0] == 0:
            raise ValueError(f"`images` is an empty batch ({_describe(images)}).")
        return list(images)
    if _is_array(images) and images.ndim not in (2, 3):
        raise ValueError(
            f"`images` is a {images.ndim}-D {_describe(images)}; expected 2-D (H, W), 3-D (C, H, W) or (H, W, C), "
            "or 4-D (a batch)."
        )
    return [images]


def _supported_image(image, name: str, settings: dict):
    """`image` as a PIL image or a 3-D numpy array the PIL backend reads as stock does, or an error naming it."""
    if isinstance(image, (str, os.PathLike)):
        image = _load_image_file(image, name)
    if isinstance(image, PIL.Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{name} is empty: height x width = {image.height} x {image.width}.")
        return scale_to_8_bit(image, name)
    if not _is_array(image):
        raise TypeError(
            f"{name} is a {_describe(image)}; expected a PIL image, a numpy array, a torch tensor or a local file path."
        )
    array = _as_numpy(image, name)
    layout = settings.get("input_data_format")
    if layout is not None and layout not in (ChannelDimension.FIRST, ChannelDimension.LAST):
        raise ValueError(
            f"`input_data_format` must be one of ('channels_first', 'channels_last') or None, got {layout!r}."
        )
    if array.ndim == 2:
        array = array[..., None] if layout == ChannelDimension.LAST else array[None]
    _check_channels(array, layout, name)
    if 0 in array.shape:
        raise ValueError(f"{name} is empty ({_describe(array)}).")
    if settings.get("do_rescale") and np.issubdtype(array.dtype, np.floating) and array.min() >= 0 and array.max() <= 1:
        logger.warning_once(
            "`images`: floating-point pixels in [0, 1] look already rescaled, but do_rescale=True scales them by "
            "rescale_factor again. Pass do_rescale=False for such inputs."
        )
    return array


def _as_numpy(image, name: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
            image = image.float()
        image = image.numpy()
    if image.dtype == np.bool_:
        return image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"{name} has dtype {image.dtype}; expected integer or floating-point pixels.")
    return image


def _check_channels(array: np.ndarray, layout, name: str) -> None:
    if layout is None:
        if array.shape[0] not in _CHANNEL_COUNTS and array.shape[-1] not in _CHANNEL_COUNTS:
            raise ValueError(
                f"{name} has shape {array.shape}: neither the first nor the last axis has 1, 3 or 4 channels. "
                "Expected (C, H, W) or (H, W, C) with C in 1, 3, 4."
            )
        return
    channels = array.shape[0 if layout == ChannelDimension.FIRST else -1]
    if channels not in _CHANNEL_COUNTS:
        raise ValueError(
            f"{name} has {channels} channels in {ChannelDimension(layout).value} layout (shape {array.shape}); "
            "expected 1, 3 or 4."
        )


__all__ = ["DualClipImageProcessor", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "load_image_file", "scale_to_8_bit"]

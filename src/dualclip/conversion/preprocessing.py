"""The tokenizer and image-processor files written beside converted weights.

Each writer returns `None` when it wrote its files, or a one-line note saying why it did not (the note goes into the
model card and the command's output); a missing tokenizer or processor never makes a converted model wrong.
"""

import json
from pathlib import Path

import PIL.Image

from ..configuration_dualclip_base import OPENAI_VOCAB_SIZE

OPENAI_PAD_TOKEN = "!"  # id 0: OpenAI's `clip.tokenize` and OpenCLIP pad with zeros
EOS_PAD_TOKEN = "<|endoftext|>"  # transformers' CLIP tokenizer pads with EOS
_RESAMPLE = {"bicubic": PIL.Image.Resampling.BICUBIC, "bilinear": PIL.Image.Resampling.BILINEAR}
# Settings with the same names and meanings in transformers' CLIPImageProcessor and DualClipImageProcessor.
IMAGE_PROCESSOR_SETTINGS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std", "do_convert_rgb",
)


def save_tokenizer(folder, pad_token: str, model_max_length: int, vocab_size: int) -> str | None:
    """Writes OpenAI's BPE tokenizer (`DualClipTokenizer`) with the given pad token and context length."""
    if vocab_size != OPENAI_VOCAB_SIZE:
        return f"no tokenizer written: the model has {vocab_size} token ids, OpenAI's vocabulary {OPENAI_VOCAB_SIZE}"
    try:
        from ..tokenization_dualclip import DualClipTokenizer
    except ImportError as error:
        return f"no tokenizer written: dualclip.tokenization_dualclip is unavailable ({error})"
    DualClipTokenizer(pad_token=pad_token, model_max_length=model_max_length).save_pretrained(folder)
    return None


def image_processor_settings(
    image_size: int, mean, std, interpolation: str = "bicubic", resize_mode: str = "shortest"
) -> tuple[dict | None, str | None]:
    """`(settings, note)`: image-processor settings for resizing (`"shortest"` edge then centre crop, or `"squash"` to
    the square) to `image_size` pixels with `interpolation`, then normalising with `mean` and `std`; or `None` and a
    note saying why the source's preprocessing cannot be expressed."""
    if interpolation not in _RESAMPLE:
        return None, f"no image processor written: the source resizes with {interpolation!r} interpolation"
    if resize_mode not in ("shortest", "squash"):
        return None, f"no image processor written: the source's resize mode {resize_mode!r} is not supported"
    shortest = resize_mode == "shortest"
    settings = dict(
        size={"shortest_edge": image_size} if shortest else {"height": image_size, "width": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=shortest,
        resample=int(_RESAMPLE[interpolation]),
        image_mean=list(mean),
        image_std=list(std),
    )
    return settings, None


def image_processor_settings_of(folder) -> dict:
    """The settings of a transformers `preprocessor_config.json` that CLIP's and dualclip's processors share."""
    config = read_json(Path(folder) / "preprocessor_config.json")
    return {key: value for key, value in config.items() if key in IMAGE_PROCESSOR_SETTINGS}


def save_image_processor(folder, settings: dict) -> str | None:
    """Writes a `DualClipImageProcessor` with `settings` (see `IMAGE_PROCESSOR_SETTINGS`)."""
    try:
        from ..image_processing_dualclip import DualClipImageProcessor
    except ImportError as error:
        return f"no image processor written: dualclip.image_processing_dualclip is unavailable ({error})"
    DualClipImageProcessor(**settings).save_pretrained(folder)
    return None


def read_json(path) -> dict:
    """A JSON object from `path`, or `{}` when the file does not exist or holds something else."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def pad_token_of(folder) -> str | None:
    """The pad token a transformers tokenizer folder declares, if any."""
    folder = Path(folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        pad = read_json(folder / name).get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str):
            return pad
    return None


# Files that make up a transformers tokenizer in a source folder (OpenCLIP hub folders carry them beside the weights).
TOKENIZER_FILE_NAMES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "spiece.model",
    "sentencepiece.bpe.model", "tokenizer.model", "vocab.txt", "vocab.json", "merges.txt",
)


def has_tokenizer_files(folder) -> bool:
    """Whether `folder` holds any of a transformers tokenizer's files."""
    return folder is not None and any((Path(folder) / name).is_file() for name in TOKENIZER_FILE_NAMES)


def save_carried_tokenizer(
    folder, source, *, model_max_length: int, text_cleaning=None, pad_to_max_length=False, strip_sep_token=False
) -> str | None:
    """Writes the tokenizer of the `source` folder (read by `AutoTokenizer` from local files, no remote code) with
    `model_max_length`, and a `DualClipProcessor` holding the original tokenizer's text defaults (see
    `DualClipProcessor`) beside the image processor already written in `folder`; `AutoProcessor` on `folder` then
    encodes captions as the original did. Returns a note when the source has no tokenizer."""
    from transformers import AutoTokenizer

    if not has_tokenizer_files(source):
        return ("no tokenizer written: the source has no tokenizer files (" + ", ".join(TOKENIZER_FILE_NAMES[:5])
                + ", ...); copy the original's tokenizer into the folder before tokenizing text for this model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as error:
        return f"no tokenizer written: the source's tokenizer files could not be read ({error})"
    tokenizer.model_max_length = model_max_length
    tokenizer.save_pretrained(folder)
    from ..image_processing_dualclip import DualClipImageProcessor
    from ..processing_dualclip import DualClipProcessor

    if (Path(folder) / "preprocessor_config.json").is_file():
        processor = DualClipProcessor(
            DualClipImageProcessor.from_pretrained(folder), tokenizer, text_cleaning=text_cleaning,
            pad_to_max_length=pad_to_max_length, strip_sep_token=strip_sep_token,
        )
        processor.save_pretrained(folder)
    return None

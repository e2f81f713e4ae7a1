"""Pieces shared by the subcommands: model and image loading with errors that name the file, table output."""

import json
import os


def add_model_argument(parser) -> None:
    parser.add_argument(
        "--model",
        metavar="FOLDER",
        default=None,
        help="a saved dualclip or transformers CLIP model folder (default: the embedded tiny-digits model)",
    )


def quiet_loading() -> None:
    """No per-tensor progress bars from transformers while a command loads its model."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def model_folder(args) -> str:
    from ..tiny_model import TINY_MODEL_PATH

    return TINY_MODEL_PATH if args.model is None else args.model


def open_images(paths) -> list:
    """Opens local image files as the image processor reads paths (upright by EXIF orientation, 16-bit images
    scaled to 8 bits, RGB); a missing or unreadable file raises an error naming it."""
    from ..image_processing_dualclip import load_image_file

    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        images.append(load_image_file(path))
    return images


def check_model_folder(folder) -> None:
    """Raises `ValueError` naming the file when a local model folder holds a `config.json` that is not a JSON
    object, not a config transformers can read or not one for a dualclip or transformers CLIP model with both
    towers, or a truncated or corrupt `.safetensors` weights file.

    Loading such a folder fails deep inside transformers or safetensors, with a message that does not say which
    file is damaged; anything that is not a local folder is left to the loader.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return
    config_path = os.path.join(folder, "config.json")
    if os.path.isfile(config_path):
        _check_config(folder, config_path)
    for path in _safetensors_files(folder):
        _check_safetensors(path)


def _check_config(folder: str, path: str) -> None:
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a JSON {type(content).__name__}, not an object of model settings")
    try:
        AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, StrictDataclassError) as error:
        raise ValueError(f"{path} is not a model config transformers can read ({error})") from None
    from ..modeling_dualclip import DualClipModel

    # The model class reads transformers CLIP configs by translating their model_type; anything else is no model
    # a command can use (loading it anyway ends in a weights report and a shape-mismatch error).
    config_class = DualClipModel.config_class
    if config_class.get_config_dict(folder)[0].get("model_type") != config_class.model_type:
        raise ValueError(
            f"{path} describes a {content.get('model_type')!r} model; expected a dualclip or transformers CLIP model "
            "with both towers (model_type 'dualclip' or 'clip')"
        )


def _safetensors_files(folder: str) -> list[str]:
    """`model.safetensors`, or the shards its index names (those that exist; a missing one is the loader's error)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.isfile(index):
        single = os.path.join(folder, "model.safetensors")
        return [single] if os.path.isfile(single) else []
    try:
        with open(index, encoding="utf-8") as file:
            shards = sorted(set(json.load(file)["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{index} is not a safetensors index (a JSON object with a weight_map): {error}") from None
    return [path for path in (os.path.join(folder, shard) for shard in shards) if os.path.isfile(path)]


def _check_safetensors(path: str) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt"):  # parses the header and checks the file holds every tensor it lists
            pass
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a complete safetensors file ({error})") from None


def load_model_and_processor(folder):
    """`dualclip.zero_shot.load_model_and_processor` for a command: a damaged folder (see `check_model_folder`) or
    any other loading failure is one `ValueError` naming the file or folder."""
    from ..zero_shot import load_model_and_processor as load

    folder = os.fspath(folder)
    check_model_folder(folder)
    try:
        return load(folder)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"cannot load the model or processor in {folder}: {error}") from error


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def top_k_cells(probabilities, labels, k: int) -> list[str]:
    """`label probability` strings for the `k` most likely labels of one row, best first."""
    order = probabilities.argsort()[::-1][:k]
    return [f"{labels[i]} {probabilities[i]:.3f}" for i in order]

"""Pieces shared by the `classify`, `embed` and `demo` subcommands."""

import os

import PIL.Image
import PIL.ImageOps


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
    """Opens local image files upright (EXIF orientation applied); clean errors for missing or unreadable files."""
    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with PIL.Image.open(path) as image:
                images.append(PIL.ImageOps.exif_transpose(image).convert("RGB"))
        except PIL.UnidentifiedImageError:
            raise ValueError(f"{path} is not an image file PIL can read") from None
    return images


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def top_k_cells(probabilities, labels, k: int) -> list[str]:
    """`label probability` strings for the `k` most likely labels of one row, best first."""
    order = probabilities.argsort()[::-1][:k]
    return [f"{labels[i]} {probabilities[i]:.3f}" for i in order]

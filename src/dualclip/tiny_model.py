"""The embedded default model: a tiny dualclip trained from scratch on scikit-learn's handwritten digits.

`TINY_MODEL_PATH` is the folder inside the installed package (weights, config, tokenizer and processor files, model
card); it loads offline like any saved model. It was trained by `examples/train_digits.py` on digits images 0-1499
only; images 1500-1796, never seen in training, ship next to it (`heldout_digits.npz`) for `dualclip demo` and
for checking its zero-shot accuracy.
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np

__all__ = [
    "DIGIT_NAMES",
    "DIGIT_TEMPLATE",
    "HELDOUT_START",
    "TINY_MODEL_PATH",
    "digits_to_uint8",
    "load_heldout_digits",
]

#: Folder of the embedded model (a plain path string, usable with any `from_pretrained`).
TINY_MODEL_PATH = str(resources.files("dualclip") / "assets" / "tiny-digits")

#: Class names, in label order 0..9, and the caption template the tiny model was trained with.
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATE = "a handwritten digit {}"

#: First held-out image: the model was trained on `load_digits()` images [0, HELDOUT_START) only.
HELDOUT_START = 1500
HELDOUT_FILE = "heldout_digits.npz"


def digits_to_uint8(images) -> np.ndarray:
    """scikit-learn digits pixels (0..16, any float or int array) as uint8 grayscale 0..255, white ink on black."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)


def load_heldout_digits(folder: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits shipped with the tiny model: `(images, labels)`.

    `images` is a uint8 `(N, 8, 8)` array (`digits_to_uint8` of `load_digits().images[1500:]`), `labels` the digit
    (0..9) of each. Reads `heldout_digits.npz` from `folder` (default `TINY_MODEL_PATH`); needs no scikit-learn.
    """
    path = os.path.join(TINY_MODEL_PATH if folder is None else folder, HELDOUT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {HELDOUT_FILE} in {os.path.dirname(path)}")
    with np.load(path) as data:
        return data["images"], data["labels"]

"""OpenCLIP's caption cleaning for tokenizers carried from a source folder (`tokenizer_kwargs.clean`).

OpenCLIP's `HFTokenizer` cleans every caption before its Hugging Face tokenizer sees it; a converted model's
processor must do the same to feed the model what it was trained on. Each mode is OpenCLIP's:

- `"whitespace"`: ftfy repair, HTML unescape (twice), whitespace runs folded to one space (OpenCLIP's default);
- `"lower"`: the same, lower-cased;
- `"canonicalize"`: the repair, then big_vision's canonicalisation: `_` to space, ASCII punctuation removed,
  lower-cased, whitespace folded (SigLIP).
"""

import html
import string
from typing import Literal

import ftfy

TextCleaning = Literal["whitespace", "lower", "canonicalize"]
TEXT_CLEANING_MODES = ("whitespace", "lower", "canonicalize")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def repair_text(text: str) -> str:
    """ftfy's repair, HTML unescaped twice, stripped: the first step of CLIP's and OpenCLIP's cleaning."""
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def clean_caption(text: str, mode: TextCleaning) -> str:
    """`text` cleaned as OpenCLIP's `HFTokenizer` cleans it with `clean=mode`."""
    if mode not in TEXT_CLEANING_MODES:
        raise ValueError(f"text cleaning must be one of {', '.join(TEXT_CLEANING_MODES)}; got {mode!r}")
    text = repair_text(text)
    if mode == "canonicalize":
        text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    elif mode == "lower":
        text = text.lower()
    return " ".join(text.split())

"""OpenAI CLIP's byte-level BPE tokenizer, exact and fast.

`DualClipTokenizer()` reproduces `clip.simple_tokenizer.SimpleTokenizer` and `clip.tokenize` id for id, including
the text cleaning that transformers' `CLIPTokenizer` skips (ftfy repair, HTML unescaping), while the `tokenizers`
library does the byte-pair encoding.

What happens to a text (each step is a function below, testable alone):

1. Routing (`needs_python_cleaning`). Most captions are printable ASCII with no HTML character reference and no
   ``<|``; on those, ftfy and ``html.unescape`` provably change nothing that reaches the tokens, and lower-casing
   and CLIP's character classes are plain ASCII.
2. Words. Such texts are lower-cased and split with an ASCII form of CLIP's regex (`fast_words`); every other text
   goes through CLIP's own preparation with the libraries the original uses (`clean_text`, `split_words`: ftfy,
   HTML unescape twice, whitespace folding, Python's lower-casing, CLIP's regex in the `regex` module), so Unicode
   case mapping and character classes match whatever their versions.
3. Byte-pair encoding. The Rust BPE model encodes each distinct word once (`build_model`, byte-level alphabet,
   ``</w>`` on the last symbol); after that a per-tokenizer table maps each whitespace-free chunk of the fast
   texts (CLIP's regex never crosses whitespace) and each word of the others straight to its ids.
4. Assembly. Special tokens, truncation (EOS kept last), padding and tensors are laid out with numpy.

When a caller needs `tokenizers.Encoding` objects (a single string, pairs, offsets, overflow, special-tokens mask,
`return_encodings=True`), the same texts instead go through the full Rust pipeline (`build_backend`: normalizer,
pre-tokenizer with CLIP's regex, BPE, post-processor), still with Python doing the cleaning for the texts that
need it. A ``tokenizer.json`` saved from this class holds that Rust pipeline; used on its own (plain `tokenizers`,
or transformers' `CLIPTokenizer` loading the folder) it is exact on the texts of step 1 and approximate on others.
"""

from __future__ import annotations

import gzip
import html
import itertools
import json
import os
import re
from importlib import resources
from typing import Any

import ftfy
import numpy as np
import regex
from tokenizers import AddedToken, Encoding, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

# transformers 5's public name for its `tokenizers`-backed base class (`TokenizersBackend`). Importing it by this
# name also matters to diffusers, which picks a component's load method by looking its base-class names up in the
# component's own module.
from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import BatchEncoding, TruncationStrategy
from transformers.utils import PaddingStrategy, TensorType

from .text_cleaning import repair_text


VOCAB_FILES_NAMES = {"vocab_file": "vocab.json", "merges_file": "merges.txt", "tokenizer_file": "tokenizer.json"}

DEFAULT_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
CONTEXT_LENGTH = 77
# The .gz holds 262,145 merges; CLIP keeps the first 48,894 so that 512 byte tokens + merges + 2 specials = 49,408.
NUM_MERGES = 49152 - 256 - 2

# CLIP's split pattern (a fact of the format; CLIP applies it with IGNORECASE to lower-cased text).
_WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_WORDS = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
_WHITESPACE_RUN = regex.compile(r"\s+")
# `regex`'s \s as an explicit class, so the Rust pre-tokenizer does not depend on Oniguruma's idea of whitespace.
_SPACE_CLASS = r"\t\n\x0B\f\r\x20\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}"

# What ftfy.fix_text or html.unescape could change, and "<|" (see `needs_python_cleaning`). An "&" followed by
# whitespace, "<", "&" or the end can start neither an HTML reference nor one of ftfy's entities.
_NEEDS_PYTHON = re.compile(r"[^\t\n\x0c\r\x20-\x7e]|&(?![\t\n\x0c <&]|\Z)|<\|")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_UNSAFE_AMPERSAND = re.compile(r"&(?![\t\n\x0c <&]|\Z)")
# CLIP's regex on what `needs_python_cleaning` lets through, lower-cased: letters are [a-z], digits [0-9],
# whitespace [\t\n\x0c\r ]. Letters and digits first is the same regex: no other alternative starts with them.
_FAST_WORDS = re.compile(r"[a-z]+|[0-9]|'(?:s|t|re|ve|m|ll|d)|[^\t\n\x0b\x0c\r a-z0-9]+")
# Ends each text in a batch split into whitespace-free chunks; never in a text `needs_python_cleaning` lets through.
_END_OF_TEXT_CHUNK = "\x00"
_PIECE_CACHE_LIMIT = 1 << 18


# --------------------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------------------


def byte_alphabet() -> list[str]:
    """The 256 characters that stand for the bytes 0..255 in CLIP's vocabulary, in vocabulary order.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, NBSP, soft hyphen) are shifted to
    U+0100 and up, in byte order. This is GPT-2's byte-level alphabet, the one `tokenizers`' `ByteLevel` uses.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(0x100 + i) for i in range(len(shifted))]


def default_bpe_path() -> str:
    """Path of OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` shipped in ``dualclip/assets``."""
    if __package__:
        try:
            return str(resources.files(__package__).joinpath("assets", DEFAULT_BPE_FILE))
        except (ModuleNotFoundError, TypeError):
            pass
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", DEFAULT_BPE_FILE)


def load_openai_bpe(path: str | os.PathLike | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read OpenAI's merges file (``.txt.gz`` or plain text) into CLIP's ``(vocab, merges)``.

    The vocabulary is the byte alphabet, the same characters with ``</w>``, one token per merge, then
    ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
    """
    path = os.fspath(path) if path is not None else default_bpe_path()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:  # binary: lines end at b"\n" only, and only the needed lines are read
        lines = list(itertools.islice(handle, NUM_MERGES + 1))
    symbols = b"".join(lines[1:]).decode("utf-8").split()
    if len(lines) != NUM_MERGES + 1 or len(symbols) != 2 * NUM_MERGES:
        raise ValueError(f"{path} is not a CLIP BPE merges file (expected {NUM_MERGES} merges after a header line)")
    firsts, seconds = symbols[0::2], symbols[1::2]
    alphabet = byte_alphabet()
    tokens = [*alphabet, *(c + END_OF_WORD for c in alphabet), *map(str.__add__, firsts, seconds), BOS_TOKEN, EOS_TOKEN]
    return dict(zip(tokens, range(len(tokens)))), list(zip(firsts, seconds))


def _load_vocab_and_merges(
    vocab: str | os.PathLike | dict[str, int] | None,
    merges: str | os.PathLike | list | None,
    tokenizer_file: str | None,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Resolve what `DualClipTokenizer` was given (dicts, vocab.json/merges.txt, tokenizer.json, nothing)."""
    if vocab is None and merges is None:
        if tokenizer_file is None or not os.path.isfile(tokenizer_file):
            return load_openai_bpe()
        with open(tokenizer_file, encoding="utf-8") as handle:
            model = json.load(handle)["model"]
        vocab, merges = model["vocab"], model["merges"]
    if vocab is None or merges is None:
        raise ValueError("vocab and merges must be given together (or neither, for OpenAI's vocabulary)")
    if isinstance(vocab, (str, os.PathLike)):
        with open(vocab, encoding="utf-8") as handle:
            vocab = json.load(handle)
    if isinstance(merges, (str, os.PathLike)):
        with open(merges, encoding="utf-8") as handle:
            merges = [line for line in handle.read().split("\n") if line and not line.startswith("#version")]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    return dict(vocab), merges


def _added_tokens_of(tokenizer_file: str) -> dict[int, AddedToken]:
    """The added tokens recorded in a ``tokenizer.json`` (from_pretrained passes them itself; direct use does not)."""
    if not os.path.isfile(tokenizer_file):
        return {}
    with open(tokenizer_file, encoding="utf-8") as handle:
        entries = json.load(handle).get("added_tokens", [])
    return {entry.pop("id"): AddedToken(**entry) for entry in entries}


# --------------------------------------------------------------------------------------------------------------
# The Rust pipeline
# --------------------------------------------------------------------------------------------------------------


def build_normalizer() -> normalizers.Normalizer:
    """NFC (ftfy's last step) then lower-casing; the identity-plus-``str.lower`` on ASCII.

    CLIP's whitespace stripping and folding are left out on purpose: the split regex never matches whitespace, so
    they cannot change a token. ftfy's other repairs and Python's full Unicode lower-casing are not expressible
    here; texts that could need them take the Python cleaning path.
    """
    return normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])


def build_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """CLIP's split regex (matches kept, everything else dropped), then the byte-level alphabet, without splitting."""
    pattern = _WORD_PATTERN.replace(r"\s", _SPACE_CLASS)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def build_word_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Byte-level alphabet only, for words that are already split."""
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


def build_model(vocab: dict[str, int], merges: list[tuple[str, str]], unk_token: str = EOS_TOKEN) -> BPE:
    """CLIP's BPE: each word's last symbol carries ``</w>``, no continuation prefix, no dropout."""
    return BPE(
        vocab=vocab,
        merges=merges,
        dropout=None,
        continuing_subword_prefix="",
        end_of_word_suffix=END_OF_WORD,
        fuse_unk=False,
        unk_token=unk_token,
    )


def build_decoder() -> decoders.Decoder:
    """CLIP's decoding: bytes back to UTF-8 (invalid sequences become U+FFFD), then every ``</w>`` becomes a space."""
    return decoders.Sequence([decoders.ByteLevel(), decoders.Replace(END_OF_WORD, " ")])


def build_backend(vocab: dict[str, int], merges: list[tuple[str, str]], unk_token: str = EOS_TOKEN) -> Tokenizer:
    """The `tokenizers.Tokenizer` that `DualClipTokenizer` wraps (the wrapper sets its post-processor)."""
    backend = Tokenizer(build_model(vocab, merges, unk_token))
    backend.normalizer = build_normalizer()
    backend.pre_tokenizer = build_pre_tokenizer()
    backend.decoder = build_decoder()
    return backend


# --------------------------------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------------------------------


def needs_python_cleaning(text: str) -> bool:
    """Whether `text` needs CLIP's Python cleaning, i.e. is not a text that the ASCII/Rust steps handle exactly.

    False only for texts over printable ASCII plus ``\\t \\n \\f \\r`` in which every ``&`` is followed by
    whitespace, ``<``, ``&`` or the end, and which contain no ``<|``. On those:

    * ``html.unescape`` is the identity: a character reference is ``&`` followed by ``#`` or a name character.
    * ``ftfy.fix_text`` is the identity except that it turns ``\\r\\n`` and ``\\r`` into ``\\n``: its other fixes
      act on non-ASCII characters, on ``&`` followed by ``#`` or a letter or digit, on ESC sequences or on the
      control characters it deletes, none of which occur. A line-break change stays inside a whitespace run,
      which only separates words, so the words are the same.
    * Lower-casing and the regex classes are plain ASCII, where Python, `regex`, Rust and Oniguruma agree.
    * ``<|startoftext|>``/``<|endoftext|>`` in text become special ids only where CLIP's regex isolates them
      (in ``"!<|endoftext|>"`` they are punctuation and letters), which `tokenizers`' added-token matching does
      not reproduce; texts with ``<|`` go to Python.
    """
    return _NEEDS_PYTHON.search(text) is not None


def clean_text(text: str) -> str:
    """CLIP's text preparation: ftfy repair, HTML unescape twice, strip, fold whitespace runs, lower-case."""
    return _WHITESPACE_RUN.sub(" ", repair_text(text)).strip().lower()


def split_words(text: str) -> list[str]:
    """CLIP's words for any `text`: `clean_text`, then CLIP's regex. BPE encodes each word on its own."""
    return _WORDS.findall(clean_text(text))


def fast_words(text: str) -> list[str]:
    """CLIP's words for a text on which `needs_python_cleaning` is False (same result as `split_words`, faster)."""
    return _FAST_WORDS.findall(text.lower())


def _python_indices(texts: list[str]) -> set[int]:
    """Indices of the texts that need Python cleaning; a few C-level scans in the common case where none does."""
    # "\n" is fast-path safe itself, ends an "&" safely and cannot complete a "<|" across two texts.
    joined = "\n".join(texts)
    if (
        joined.isascii()
        and _ASCII_CONTROL.search(joined) is None
        and "<|" not in joined
        and ("&" not in joined or _UNSAFE_AMPERSAND.search(joined) is None)
    ):
        return set()
    return {i for i, text in enumerate(texts) if _NEEDS_PYTHON.search(text) is not None}


class _PieceTable:
    """Pieces of text (whitespace-free chunks or CLIP words) and their BPE ids, stored for vectorized lookups.

    Row 0 is the end-of-text chunk, which has no ids. A chunk's ids are the ids of its CLIP words in order; an
    ASCII CLIP word is its own only word, so a string means the same whether it came as a chunk or as a word.
    """

    def __init__(self) -> None:
        self.rows = {_END_OF_TEXT_CHUNK: 0}
        # (first id of each row in `ids`, number of ids of each row, all ids), replaced as one value.
        self.arrays = (np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64))

    def lookup(self, pieces: list[str]) -> np.ndarray:
        """Row of every piece; KeyError if one is missing."""
        return np.fromiter(map(self.rows.__getitem__, pieces), dtype=np.int64, count=len(pieces))

    def add(self, pieces: list[str], ids: list[list[int]]) -> None:
        starts, counts, flat = self.arrays
        new_counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        new_flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(new_counts.sum()))
        self.arrays = (
            np.concatenate([starts, len(flat) + np.cumsum(new_counts) - new_counts]),
            np.concatenate([counts, new_counts]),
            np.concatenate([flat, new_flat]),
        )
        # Rows are published after their ids, so a concurrent reader never sees a row without them.
        first_row = len(self.rows)
        self.rows.update(zip(pieces, range(first_row, first_row + len(pieces))))

    def expand(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The concatenated ids of `rows` and each row's number of ids."""
        starts, counts, flat = self.arrays
        counts = counts[rows]
        ends = np.cumsum(counts)
        total = int(ends[-1]) if len(ends) else 0
        return flat[np.repeat(starts[rows] - (ends - counts), counts) + np.arange(total)], counts


# --------------------------------------------------------------------------------------------------------------
# The transformers tokenizer
# --------------------------------------------------------------------------------------------------------------


class DualClipTokenizer(PreTrainedTokenizerFast):
    """OpenAI CLIP's tokenizer as a fast transformers tokenizer, identical to the original.

    With no arguments it is built from OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` shipped in the package, and

    * ``tok(texts, add_special_tokens=False)["input_ids"]`` equals ``SimpleTokenizer().encode(text)`` per text;
    * ``tok(texts, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]`` equals
      ``clip.tokenize(texts, truncate=True)`` (``<|startoftext|>`` first, ``<|endoftext|>`` last even when
      truncated, pad id 0), with ``attention_mask`` 1 on the real tokens.

    Batches of texts come back without `BatchEncoding.encodings` (the fast path lays ids out with numpy); a single
    string, text pairs, ``return_offsets_mapping``, ``return_overflowing_tokens``, ``return_special_tokens_mask``,
    ``return_length``, ``return_token_type_ids`` or ``return_encodings=True`` give full `tokenizers` encodings
    (``tokens()``, ``word_ids()``, offsets). Both give the same ids. For texts that needed Python cleaning,
    offsets point into the cleaned words, not into the raw text.

    Args:
        vocab (`dict[str, int]` or path to ``vocab.json``, *optional*):
            Token-to-id map. Give it with `merges`, or neither to use OpenAI's vocabulary.
        merges (`list[tuple[str, str]]`, `list[str]` or path to ``merges.txt``, *optional*):
            BPE merges in priority order.
        unk_token (`str`, defaults to ``"<|endoftext|>"``):
            Never produced by CLIP's byte-level BPE; equal to EOS as in transformers' CLIP.
        bos_token (`str`, defaults to ``"<|startoftext|>"``, id 49406):
            Put first when ``add_special_tokens=True``.
        eos_token (`str`, defaults to ``"<|endoftext|>"``, id 49407):
            Put last when ``add_special_tokens=True``; kept last when truncating.
        pad_token (`str`, defaults to ``"!"``):
            ``"!"`` pads with id 0 (OpenAI, OpenCLIP, SD-2, SDXL's second text encoder); ``"<|endoftext|>"`` pads
            with EOS (transformers' CLIP, SD-1). Padding is 0 in ``attention_mask`` either way.
        model_max_length (`int`, defaults to 77):
            CLIP's context length; used by ``padding="max_length"`` and ``truncation=True``.

    Added tokens: a token the BPE vocabulary already holds, other than BOS and EOS, is never registered as an added
    token (``add_tokens(["!"])`` returns 0), since matching it in running text would break CLIP's splitting. New
    tokens (textual inversion) are matched in the raw text before any cleaning, case-insensitively when added with
    ``normalized=True``; the text between them is cleaned piece by piece. ``split_special_tokens=True`` and
    ``is_split_into_words=True`` are not supported: CLIP's own rules decide both.

    Decoding follows the original: ``decode(ids)`` equals ``SimpleTokenizer().decode(ids)``: every ``</w>``
    becomes a space (so the text usually ends with one), ``<|startoftext|>``/``<|endoftext|>`` are written out.
    ``skip_special_tokens=True`` drops BOS and EOS and, when the pad token is an ordinary vocabulary entry such as
    ``"!"``, the runs of pad ids at either end (an id 0 inside the text is a real ``"!"`` and stays).
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]
    model = BPE
    padding_side = "right"
    truncation_side = "right"

    def __init__(
        self,
        vocab: str | dict[str, int] | None = None,
        merges: str | list | None = None,
        unk_token: str = EOS_TOKEN,
        bos_token: str = BOS_TOKEN,
        eos_token: str = EOS_TOKEN,
        pad_token: str = "!",
        **kwargs: Any,
    ):
        tokenizer_file = kwargs.pop("tokenizer_file", None)
        vocab, merges = _load_vocab_and_merges(
            vocab if vocab is not None else kwargs.get("vocab_file"),
            merges if merges is not None else kwargs.get("merges_file"),
            tokenizer_file,
        )
        if tokenizer_file is not None and "added_tokens_decoder" not in kwargs:
            kwargs["added_tokens_decoder"] = _added_tokens_of(tokenizer_file)
        self._reset_word_state()
        self._tokenizer = build_backend(vocab, merges, str(unk_token))
        # The pipeline is rebuilt from vocab and merges; a post-processor read back from tokenizer.json is replaced
        # by the one the base class builds from add_bos_token/add_eos_token.
        kwargs.pop("post_processor", None)
        kwargs.setdefault("add_bos_token", True)
        kwargs.setdefault("add_eos_token", True)
        kwargs.setdefault("model_max_length", CONTEXT_LENGTH)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(unk_token=unk_token, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token, **kwargs)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_words_backend=None, _added_token_matcher=None, _pieces=_PieceTable())
        return state

    def _reset_word_state(self) -> None:
        self._words_backend = None  # built lazily: `_get_words_backend`
        self._added_token_matcher = None  # built lazily: `_get_added_token_matcher`
        self._pieces = _PieceTable()  # chunks and words -> BPE ids

    # ---- added tokens ----------------------------------------------------------------------------------------

    def _add_tokens(self, new_tokens: list[str | AddedToken], special_tokens: bool = False) -> int:
        clip_specials = {str(self.bos_token), str(self.eos_token)}
        kept = [t for t in new_tokens if str(t) in clip_specials or self._tokenizer.model.token_to_id(str(t)) is None]
        self._reset_word_state()
        return super()._add_tokens(kept, special_tokens=special_tokens) if kept else 0

    def _get_added_token_matcher(self) -> tuple[re.Pattern, list[str]] | None:
        """A regex with one group per user-added token (longest first) and the tokens in group order."""
        if self._added_token_matcher is None:
            clip_specials = {str(self.bos_token), str(self.eos_token)}
            tokens = [t for t in self.added_tokens_decoder.values() if t.content not in clip_specials]
            tokens.sort(key=lambda t: -len(t.content))
            pattern = "|".join(f"((?i:{re.escape(t.content)}))" if t.normalized else f"({re.escape(t.content)})" for t in tokens)
            self._added_token_matcher = (re.compile(pattern), [t.content for t in tokens]) if tokens else False
        return self._added_token_matcher or None

    def _get_words_backend(self) -> Tokenizer:
        """A tokenizer sharing our BPE model that byte-encodes and BPE-encodes words split in Python."""
        if self._words_backend is None:
            backend = Tokenizer(self._tokenizer.model)
            backend.pre_tokenizer = build_word_pre_tokenizer()
            backend.decoder = build_decoder()
            added = [token for _, token in sorted(self.added_tokens_decoder.items())]
            backend.add_tokens(added)
            for token in added:
                if backend.token_to_id(token.content) != self._tokenizer.token_to_id(token.content):
                    raise RuntimeError(f"added token {token.content!r} got a different id on the word path")
            self._words_backend = backend
        return self._words_backend

    # ---- words to ids ----------------------------------------------------------------------------------------

    def _words(self, text: str, needs_cleaning: bool) -> list[str]:
        """CLIP's words for `text`, with the user's added tokens kept whole."""
        split = split_words if needs_cleaning else fast_words
        matcher = self._get_added_token_matcher()
        if matcher is None:
            return split(text)
        pattern, contents = matcher
        words, start = [], 0
        for match in pattern.finditer(text):
            words += split(text[start : match.start()])
            words.append(contents[match.lastindex - 1])
            start = match.end()
        return words + split(text[start:])

    def _rows(self, pieces: list[str], are_chunks: bool) -> tuple[_PieceTable, np.ndarray]:
        """The piece table and the rows of `pieces` in it, BPE-encoding new pieces in one Rust call."""
        table = self._pieces
        try:
            return table, table.lookup(pieces)
        except KeyError:
            pass
        missing = list(set(pieces).difference(table.rows))
        if len(table.rows) + len(missing) > _PIECE_CACHE_LIMIT:
            table = self._pieces = _PieceTable()
            missing = list(set(pieces).difference(table.rows))
        words_of = [fast_words(piece) for piece in missing] if are_chunks else [[piece] for piece in missing]
        unique_words = list(set(itertools.chain.from_iterable(words_of)))
        backend = self._get_words_backend()
        backend.no_truncation()
        backend.no_padding()
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # tokenizers < 0.21 lacks the fast one
        encodings = encode([[w] for w in unique_words], is_pretokenized=True, add_special_tokens=False)
        word_ids = dict(zip(unique_words, (e.ids for e in encodings)))
        table.add(missing, [[i for w in words for i in word_ids[w]] for words in words_of])
        return table, table.lookup(pieces)

    def _content_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids without special tokens, concatenated, and each text's number of ids."""
        python = _python_indices(texts)
        if not python and self._get_added_token_matcher() is None:
            # CLIP's regex never crosses whitespace, so a text's ids are its chunks' ids in order.
            chunks = (f" {_END_OF_TEXT_CHUNK} ".join(texts) + f" {_END_OF_TEXT_CHUNK}").lower().split()
            table, rows = self._rows(chunks, are_chunks=True)
            flat, counts = table.expand(rows)
            text_ends = np.cumsum(counts)[rows == 0]
            return flat, np.diff(text_ends, prepend=0)
        word_lists = [self._words(text, i in python) for i, text in enumerate(texts)]
        table, rows = self._rows(list(itertools.chain.from_iterable(word_lists)), are_chunks=False)
        flat, counts = table.expand(rows)
        n_words = np.fromiter(map(len, word_lists), dtype=np.int64, count=len(word_lists))
        text_ends = np.concatenate([[0], np.cumsum(counts)])[np.cumsum(n_words)]
        return flat, np.diff(text_ends, prepend=0)

    # ---- encoding --------------------------------------------------------------------------------------------

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False, **kwargs) -> list[str]:
        """The BPE tokens of `text` (strings in the byte-level alphabet, ``</w>`` ending each word)."""
        kwargs["return_encodings"] = True
        return super().tokenize(text, pair=pair, add_special_tokens=add_special_tokens, **kwargs)

    def _encode_plus(
        self,
        text,
        text_pair=None,
        add_special_tokens: bool = True,
        padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
        truncation_strategy: TruncationStrategy = TruncationStrategy.DO_NOT_TRUNCATE,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | TensorType | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        split_special_tokens: bool | None = None,
        return_encodings: bool = False,
        **kwargs,
    ) -> BatchEncoding:
        if is_split_into_words:
            raise NotImplementedError(
                "DualClipTokenizer does not support is_split_into_words=True: CLIP splits words itself; "
                "pass the text as one string (words joined by spaces tokenize the same)."
            )
        if split_special_tokens:
            raise NotImplementedError(
                "DualClipTokenizer does not support split_special_tokens=True: as in CLIP, "
                f"{BOS_TOKEN!r} and {EOS_TOKEN!r} in a text are special wherever CLIP's regex isolates them."
            )
        tensor_type = _tensor_type(return_tensors)
        texts, batched = _as_text_batch(text, "text")
        pairs = None
        if text_pair is not None:
            pairs, pair_batched = _as_text_batch(text_pair, "text_pair")
            if pair_batched != batched or len(pairs) != len(texts):
                raise ValueError(
                    "text_pair must match text: a str for a str, or a list of the same length "
                    f"(got {len(pairs)} pair(s) for {len(texts)} text(s))"
                )
        if padding_side is not None and padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")

        n_special = self._num_special(add_special_tokens)
        truncate = truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE and max_length is not None
        fast_layout = not (
            return_encodings
            or not batched
            or pairs is not None
            or return_offsets_mapping
            or return_overflowing_tokens
            or return_special_tokens_mask
            or return_length
            or return_token_type_ids
            or truncation_strategy not in _SINGLE_SEQUENCE_TRUNCATION
            or tensor_type not in (None, TensorType.PYTORCH, TensorType.NUMPY)
            or (truncate and max_length < n_special)  # let the backend raise its own error
        )
        if fast_layout:
            flat, lengths = self._content_ids(texts)
            return self._lay_out(
                flat,
                lengths,
                add_special_tokens=add_special_tokens,
                max_length=max_length if truncate else None,
                padding_strategy=padding_strategy,
                padding_length=max_length,
                pad_to_multiple_of=pad_to_multiple_of,
                padding_side=padding_side or self.padding_side,
                return_attention_mask=return_attention_mask is not False,
                tensor_type=tensor_type,
                warn_if_longer=max_length is None and verbose,
            )

        common = dict(
            return_token_type_ids=return_token_type_ids,
            return_attention_mask=return_attention_mask,
            return_overflowing_tokens=return_overflowing_tokens,
            return_special_tokens_mask=return_special_tokens_mask,
            return_offsets_mapping=return_offsets_mapping,
            return_length=return_length,
            verbose=verbose,
        )
        python = _python_indices(texts + (pairs or []))
        if not python:
            return super()._encode_plus(
                text,
                text_pair=text_pair,
                add_special_tokens=add_special_tokens,
                padding_strategy=padding_strategy,
                truncation_strategy=truncation_strategy,
                max_length=max_length,
                stride=stride,
                pad_to_multiple_of=pad_to_multiple_of,
                padding_side=padding_side,
                return_tensors=return_tensors,
                split_special_tokens=False,
                **common,
                **kwargs,
            )
        self.set_truncation_and_padding(
            padding_strategy=padding_strategy,
            truncation_strategy=truncation_strategy,
            max_length=max_length,
            stride=stride,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
        )
        encodings = self._encode_routed(texts, pairs, python, add_special_tokens)
        return self._to_batch_encoding(encodings, batched, max_length, return_tensors, **common)

    def _num_special(self, add_special_tokens: bool) -> int:
        return int(add_special_tokens) * (int(self.add_bos_token) + int(self.add_eos_token))

    def _lay_out(
        self,
        flat: np.ndarray,
        lengths: np.ndarray,
        *,
        add_special_tokens: bool,
        max_length: int | None,
        padding_strategy: PaddingStrategy,
        padding_length: int | None,
        pad_to_multiple_of: int | None,
        padding_side: str,
        return_attention_mask: bool,
        tensor_type: TensorType | None,
        warn_if_longer: bool,
    ) -> BatchEncoding:
        """Special tokens, truncation, padding and tensors for ids given as (concatenated ids, lengths)."""
        n = len(lengths)
        bos = add_special_tokens and self.add_bos_token
        eos = add_special_tokens and self.add_eos_token
        keep = lengths if max_length is None else np.minimum(lengths, max_length - int(bos) - int(eos))
        totals = keep + int(bos) + int(eos)
        if padding_strategy == PaddingStrategy.LONGEST:
            target = int(totals.max(initial=0))
        elif padding_strategy == PaddingStrategy.MAX_LENGTH:
            target = padding_length if padding_length is not None else int(totals.max(initial=0))
        else:
            target = 0
        if target and pad_to_multiple_of and target % pad_to_multiple_of:
            target += pad_to_multiple_of - target % pad_to_multiple_of
        final = np.maximum(totals, target)
        width = int(final.max(initial=0))
        ids = np.full((n, width), self.pad_token_id if target else 0, dtype=np.int64)
        shift = final - totals if padding_side == "left" else np.zeros(n, dtype=np.int64)
        first = np.cumsum(lengths) - lengths + (lengths - keep if self.truncation_side == "left" else 0)
        rows = np.repeat(np.arange(n), keep)
        within = np.arange(int(keep.sum())) - np.repeat(np.cumsum(keep) - keep, keep)
        ids[rows, np.repeat(shift + int(bos), keep) + within] = flat[np.repeat(first, keep) + within]
        if bos:
            ids[np.arange(n), shift] = self.bos_token_id
        if eos:
            ids[np.arange(n), shift + int(bos) + keep] = self.eos_token_id
        columns = {"input_ids": ids}
        if return_attention_mask:
            positions = np.arange(width)
            columns["attention_mask"] = (
                (positions >= shift[:, None]) & (positions < (shift + totals)[:, None])
            ).astype(np.int64)

        if warn_if_longer and n:
            self._eventual_warn_about_too_long_sequence(range(int(totals.max())), None, True)
        return _batch_encoding_from_rows(columns, final, tensor_type)

    def _encode_routed(
        self, texts: list[str], pairs: list[str] | None, python: set[int], add_special_tokens: bool
    ) -> list[Encoding]:
        """Encodings: texts the Rust pipeline handles exactly go to it, the rest as Python-split words."""
        n = len(texts)
        in_python = [i in python or (pairs is not None and n + i in python) for i in range(n)]
        padding = self._tokenizer.padding
        self._tokenizer.no_padding()
        try:
            items = [(texts[i], pairs[i]) if pairs else texts[i] for i in range(n) if not in_python[i]]
            rust = iter(self._tokenizer.encode_batch(items, add_special_tokens=add_special_tokens))
        finally:
            if padding is not None:
                self._tokenizer.enable_padding(**padding)
        words = self._get_words_backend()
        words.post_processor = self._tokenizer.post_processor
        truncation = self._tokenizer.truncation
        if truncation is None:
            words.no_truncation()
        else:
            words.enable_truncation(**truncation)
        words.no_padding()
        word_items = [
            (self._words(texts[i], True), self._words(pairs[i], True)) if pairs else self._words(texts[i], True)
            for i in range(n)
            if in_python[i]
        ]
        python_encodings = iter(
            words.encode_batch(word_items, add_special_tokens=add_special_tokens, is_pretokenized=True)
        )
        words.no_truncation()
        encodings = [next(python_encodings) if in_python[i] else next(rust) for i in range(n)]
        if padding is not None:
            _pad_encodings(encodings, padding)
        return encodings

    def _to_batch_encoding(
        self,
        encodings: list[Encoding],
        batched: bool,
        max_length: int | None,
        return_tensors,
        return_overflowing_tokens: bool = False,
        verbose: bool = True,
        **convert_kwargs,
    ) -> BatchEncoding:
        """Assemble a `BatchEncoding` from encodings the way `PreTrainedTokenizerFast._encode_plus` does."""
        columns: dict[str, list] = {}
        rows: list[Encoding] = []
        sample_of_row: list[int] = []
        for i, encoding in enumerate(encodings):
            values, expanded = self._convert_encoding(
                encoding=encoding, return_overflowing_tokens=return_overflowing_tokens, verbose=verbose, **convert_kwargs
            )
            for key, value in values.items():
                columns.setdefault(key, []).extend(value)
            rows.extend(expanded)
            sample_of_row.extend([i] * len(expanded))
        if return_overflowing_tokens:
            columns["overflow_to_sample_mapping"] = sample_of_row
        for input_ids in columns["input_ids"]:
            self._eventual_warn_about_too_long_sequence(input_ids, max_length, verbose)
        output = BatchEncoding(columns, rows, tensor_type=return_tensors)
        if not batched and return_tensors is None and not return_overflowing_tokens:
            output = BatchEncoding(
                {key: (value[0] if value and isinstance(value[0], list) else value) for key, value in output.items()},
                output.encodings,
            )
        return output

    # ---- decoding and saving ---------------------------------------------------------------------------------

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs,
    ) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        pad_id = self.pad_token_id
        if skip_special_tokens and pad_id is not None and str(self.pad_token) not in self.added_tokens_encoder:
            # An ordinary-vocabulary pad ("!", id 0) is not skipped by the backend; drop it where it is padding.
            token_ids = list(token_ids)
            end = len(token_ids)
            while end and token_ids[end - 1] == pad_id:
                end -= 1
            start = 0
            while start < end and token_ids[start] == pad_id:
                start += 1
            token_ids = token_ids[start:end]
        return super()._decode(
            token_ids,
            skip_special_tokens=skip_special_tokens,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write ``vocab.json`` and ``merges.txt`` (the files of transformers' CLIP folders)."""
        return tuple(self._tokenizer.model.save(save_directory, prefix=filename_prefix))


_SINGLE_SEQUENCE_TRUNCATION = (
    TruncationStrategy.DO_NOT_TRUNCATE,
    TruncationStrategy.LONGEST_FIRST,
    TruncationStrategy.ONLY_FIRST,
)


def _tensor_type(return_tensors: Any) -> TensorType | None:
    if return_tensors is None or isinstance(return_tensors, TensorType):
        return return_tensors
    try:
        return TensorType(return_tensors)
    except ValueError:
        raise ValueError(
            f"return_tensors must be one of {[t.value for t in TensorType]} or None, got {return_tensors!r}"
        ) from None


def _as_text_batch(value: Any, name: str) -> tuple[list[str], bool]:
    """``(texts, batched)`` for a str or a list/tuple of str; a clear error for anything else."""
    if isinstance(value, str):
        return [value], False
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} is an empty list; pass at least one string")
        if set(map(type, value)) == {str}:
            return list(value), True
        for i, item in enumerate(value):
            if not isinstance(item, str):
                nested = " (nested lists are not supported)" if isinstance(item, (list, tuple)) else ""
                raise TypeError(f"{name} must be a str or a list of str, got {type(item).__name__} at {name}[{i}]{nested}")
        return list(value), True
    raise TypeError(f"{name} must be a str or a list of str, got {type(value).__name__}")


def _batch_encoding_from_rows(columns: dict[str, np.ndarray], lengths: np.ndarray, tensor_type) -> BatchEncoding:
    """A `BatchEncoding` of lists (row i cut to lengths[i]) or, when all rows are full, of tensors."""
    ragged = bool(len(lengths)) and int(lengths.min()) != int(lengths.max())
    if tensor_type is None:
        if ragged:
            return BatchEncoding({k: [r[:n] for r, n in zip(v.tolist(), lengths.tolist())] for k, v in columns.items()})
        return BatchEncoding({k: v.tolist() for k, v in columns.items()})
    if ragged:
        raise ValueError(
            "Unable to create tensor: the sequences have different lengths. Use padding=True (or "
            "padding='max_length') and truncation=True to get tensors of one shape."
        )
    if tensor_type == TensorType.PYTORCH:
        import torch

        columns = {k: torch.from_numpy(v) for k, v in columns.items()}
    return BatchEncoding(columns)


def _pad_encodings(encodings: list[Encoding], padding: dict) -> None:
    """Pad in place as the Rust backend pads a whole batch."""
    length = padding["length"]
    if length is None:
        length = max(len(e.ids) for e in encodings)
    multiple = padding.get("pad_to_multiple_of")
    if multiple and length % multiple:
        length += multiple - length % multiple
    for encoding in encodings:
        encoding.pad(
            length,
            direction=padding["direction"],
            pad_id=padding["pad_id"],
            pad_type_id=padding["pad_type_id"],
            pad_token=padding["pad_token"],
        )


__all__ = ["DualClipTokenizer"]

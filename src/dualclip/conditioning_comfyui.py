r"""ComfyUI's prompt rules (its `comfy/sd1_clip.py`, GPL, read to derive them; none of its code is used).

**Parsing** (`parse_comfyui`). Only round brackets are syntax; `\(` and `\)` are literal. The prompt is cut into
top-level segments: plain text runs and balanced `( ... )` groups (a `)` with nothing open makes the rest of the
prompt literal up to where the count balances again; an unclosed `(` leaves its text literal). A group multiplies the
weight around it by 1.1; if its text has a `:` after the first character and what follows the last `:` is a Python
float (`float()` accepts spaces, `1e1`, `inf`), that number *replaces* the weight (`((x:1.5))` is 1.5, not 1.65) and
`:number` is cut off; otherwise the `:` stays text. Groups are parsed again inside. `[x]` and `BREAK` are plain text,
and neighbouring segments are never merged.

**Chunking** (`tokenize_comfyui`). Each segment is tokenized on its own and kept together when it is short: a
segment of fewer than 8 tokens that does not fit in the current chunk moves whole to the next one; a longer segment
fills the chunk and continues in the next. Chunks are `[BOS] up to 75 tokens [EOS] [pad...]`. A word
`embedding:NAME` (after a space or a newline) is a textual-inversion embedding, its vectors one group: here, a token
`NAME` or `<NAME>` added to the tokenizer (`pipe.load_textual_inversion(..., token=...)`); one the tokenizer lacks
is left out with a warning, as ComfyUI leaves out an embedding it cannot find.

**Weighting** (`weight_toward_empty`): when any token of the prompt has a weight other than 1, the empty prompt
(`[BOS] [EOS] [pad...]`) is encoded with the chunks, and each such token's states become
`(z - empty) * w + empty`, with `empty` taken at the same position. Other tokens are untouched; there is no mean
restoring. The pooled embedding (SDXL) is the first chunk's.
"""

from __future__ import annotations

import re
import warnings

import torch

from .conditioning_tokens import multi_vector_expansions, pad_id

ROUND = 1.1
LONG_SEGMENT = 8  # ComfyUI's max_word_length: segments this long may be split across chunks
_EMBEDDING = "embedding:"
_EMBEDDING_SPLIT = re.compile(r" embedding:|\nembedding:")
_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))


def _escape(text: str) -> str:
    for escaped, placeholder in _ESCAPES:
        text = text.replace(escaped, placeholder)
    return text


def _unescape(text: str) -> str:
    return text.replace("\0\1", ")").replace("\0\2", "(")


def _segments(text: str) -> list[str]:
    """Top-level plain runs and `( ... )` groups, by a running bracket count."""
    segments, current, depth = [], "", 0
    for char in text:
        if char == "(":
            if depth == 0:
                if current:
                    segments.append(current)
                current = "("
            else:
                current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                segments.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        segments.append(current)
    return segments


def _weights(text: str, weight: float) -> list[tuple[str, float]]:
    out = []
    for segment in _segments(text):
        if len(segment) >= 2 and segment[0] == "(" and segment[-1] == ")":
            inner, inner_weight = segment[1:-1], weight * ROUND
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1 :])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += _weights(inner, inner_weight)
        else:
            out.append((segment, weight))
    return out


def parse_comfyui(text: str) -> list[tuple[str, float]]:
    """ComfyUI's `(text, weight)` segments of a prompt.

    >>> parse_comfyui("a (red:1.3) car, ((fast))")
    [('a ', 1.0), ('red', 1.3), (' car, ', 1.0), ('fast', 1.2100000000000002)]
    """
    return [(_unescape(segment), weight) for segment, weight in _weights(_escape(text), 1.0)]


def _groups(segment: str, weight: float, tokenizer, expansions) -> list[list[tuple[int, float]]]:
    """The token groups of one segment: the segment, or its pieces around `embedding:` words."""
    pieces = _EMBEDDING_SPLIT.split(segment)
    pieces = [pieces[0]] + [_EMBEDDING + piece for piece in pieces[1:]]
    groups = []
    for piece in (p for p in pieces if p != ""):
        if piece.startswith(_EMBEDDING):
            words = piece[len(_EMBEDDING) :].strip("\n").split()
            if not words:
                raise ValueError(f"'{_EMBEDDING}' without a name in prompt segment {segment!r}")
            name, leftover = words[0], " ".join(words[1:])
            token_ids = _embedding_ids(tokenizer, name, expansions)
            if token_ids is None and name.strip(",") != name:
                stripped = name.strip(",")
                token_ids = _embedding_ids(tokenizer, stripped, expansions)
                leftover = f"{name[len(stripped):]} {leftover}"
            if token_ids is None:  # ComfyUI warns and leaves the embedding out
                warnings.warn(f"embedding:{name} is not a token of this tokenizer (load it with "
                              f"pipe.load_textual_inversion(path, token='{name}')); left out as ComfyUI does",
                              stacklevel=4)
            else:
                groups.append([(token_id, weight) for token_id in token_ids])
            if leftover == "":
                continue
            piece = leftover
        ids = tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"]
        groups.append([(token_id, weight) for token in ids for token_id in expansions.get(token, (token,))])
    return groups


def _embedding_ids(tokenizer, name: str, expansions) -> list[int] | None:
    added = tokenizer.added_tokens_encoder
    for token in (name, f"<{name}>"):
        if token in added:
            return list(expansions.get(added[token], (added[token],)))
    return None


def tokenize_comfyui(prompt: str, tokenizer, length: int = 75) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and weights of `prompt` as ComfyUI chunks it: two `(chunks, length + 2)` tensors."""
    expansions = multi_vector_expansions(tokenizer)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, pad_id(tokenizer)
    context = length + 2
    rows: list[list[tuple[int, float]]] = []
    row: list[tuple[int, float]] = [(bos, 1.0)]
    for segment, weight in parse_comfyui(prompt):
        for group in _groups(segment, weight, tokenizer, expansions):
            long = len(group) >= LONG_SEGMENT
            while group:
                if len(group) + len(row) > context - 1:
                    room = context - len(row) - 1
                    if long:
                        row += group[:room] + [(eos, 1.0)]
                        group = group[room:]
                    else:
                        row += [(eos, 1.0)] + [(pad, 1.0)] * room
                    rows.append(row)
                    row = [(bos, 1.0)]
                else:
                    row += group
                    group = []
    row += [(eos, 1.0)]
    rows.append(row + [(pad, 1.0)] * (context - len(row)))
    ids = torch.tensor([[token for token, _ in r] for r in rows], dtype=torch.long)
    weights = torch.tensor([[w for _, w in r] for r in rows], dtype=torch.float32)
    return ids, weights


def empty_row(tokenizer, length: int = 75) -> torch.Tensor:
    """`[BOS] [EOS] [pad...]`: the empty prompt ComfyUI weights toward."""
    return torch.tensor([[tokenizer.bos_token_id, tokenizer.eos_token_id] + [pad_id(tokenizer)] * length])


def weight_toward_empty(hidden: torch.Tensor, weights: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """`(z - empty) * w + empty` for every position whose weight is not 1; `hidden` is `(chunks, positions,
    channels)`, `empty` `(positions, channels)`, both float32 as ComfyUI computes them."""
    weights = weights.to(device=hidden.device, dtype=torch.float32)[..., None]
    moved = (hidden - empty) * weights + empty
    return torch.where(weights != 1, moved, hidden)


__all__ = ["empty_row", "parse_comfyui", "tokenize_comfyui", "weight_toward_empty"]

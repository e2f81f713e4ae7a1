r"""AUTOMATIC1111's prompt rules: attention syntax, chunking with comma backtracking, emphasis.

Written here from the rules A1111's web UI follows (its `modules/prompt_parser.py`, `sd_hijack_clip.py` and
`sd_emphasis.py` were read to derive them; A1111 is AGPL and none of its code is used). The rules, in the order a
prompt meets them:

**Before parsing** (positive prompts only, as A1111's processing does): extra-network tags `<name:args>`
(`<lora:detail:0.8>`) are removed from the text. A prompt split by the word `AND` (composable diffusion), a trailing
`:w` with `w != 1` (a composable weight), prompt editing `[a:b:0.5]` and alternation `[a|b]` are sampler features that
no single embedding represents: they are refused with an error rather than encoded differently.

**Parsing** (`parse_a1111`), scanning left to right, each step taking the first rule that matches:
1. `\(`, `\)`, `\[`, `\]`, `\\` are the character itself; a backslash before anything else is dropped.
2. `(` and `[` open a group (round and square brackets keep separate stacks, so groups may cross: `[a (b] c)`).
3. `:` + a run of digits and dots + `)` closes the innermost open round group, multiplying everything since its
   `(` by that number; with no round group open it is text. A run that is not a number (`1.2.3`, `.`) fails, as in
   A1111 (`float()` raises).
4. `)` closes the innermost round group (x 1.1), `]` the innermost square group (x 1/1.1); with none open, text.
5. Anything else is text (a lone `:` too); the word `BREAK` with the spaces around it, inside a text run, becomes a
   chunk break marker `("BREAK", -1.0)`.
At the end, groups still open weight the rest of the prompt: round ones (x 1.1) in the order opened, then square
ones. Adjacent entries of equal weight are merged (markers included: a marker whose weight changed inside brackets
is no longer a marker but the text "BREAK"). An empty result is `[("", 1.0)]`.

**Chunking** (`chunk_a1111`): tokens fill chunks of 75 (`[BOS] 75 tokens [EOS]` = 77 positions, short chunks
padded with EOS, then everything after the first EOS replaced by the tokenizer's pad token). A `BREAK` closes the
current chunk even when empty; one at the very end adds nothing. When a chunk is full and the next token is not a
comma, and the chunk's last comma lies within `comma_backtrack` tokens (A1111's "Prompt word wrap length limit",
default 20; 0 disables) of its end, the tokens after that comma move to the next chunk. A comma that itself opens a
chunk is not remembered. A multi-vector textual-inversion token is never split across chunks.

**Emphasis** (`emphasize`), per chunk and per text encoder: "Original" multiplies each position's hidden state by
its weight and then rescales the whole chunk so that its mean is the unweighted mean; "No norm" only multiplies;
"Ignore" parses but applies no weight; "None" does not parse at all (brackets and BREAK are text).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import torch

from .conditioning_tokens import comma_token_id, fragment_token_ids, multi_vector_expansions, pad_id

ROUND = 1.1
SQUARE = 1 / 1.1
BREAK_MARKER = ("BREAK", -1.0)
EMPHASES = ("Original", "No norm", "Ignore", "None")
DEFAULT_COMMA_BACKTRACK = 20

# One lexical item per match; alternatives in priority order (see the module docstring).
_ITEM = re.compile(
    r"(?P<escaped>\\[()\[\]\\])"
    r"|(?P<backslash>\\)"
    r"|(?P<open>[(\[])"
    r"|:(?P<weight>[+-]?[.\d]+)\)"
    r"|(?P<close>[)\]])"
    r"|(?P<text>[^\\()\[\]:]+|:)"
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_AND = re.compile(r"\bAND\b")
_COMPOSABLE_WEIGHT = re.compile(r"^(\s*.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
_ESCAPE = re.compile(r"\\.", re.S)
_ALTERNATION = re.compile(r"\[[^\]]*\|")
_SCHEDULE = re.compile(r":\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\]")


def parse_a1111(text: str) -> list[tuple[str, float]]:
    r"""A1111's `(text, weight)` list for a prompt; `("BREAK", -1.0)` marks a chunk break.

    >>> parse_a1111("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    >>> parse_a1111("(unbalanced")
    [('unbalanced', 1.1)]
    >>> parse_a1111("(unnecessary)(parens)")
    [('unnecessaryparens', 1.1)]
    """
    entries: list[list] = []  # [text, weight], weights multiplied in place as groups close
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float):
        for entry in entries[start:]:
            entry[1] *= factor

    for match in _ITEM.finditer(text):
        kind = match.lastgroup
        if kind == "escaped":
            entries.append([match.group()[1], 1.0])
        elif kind == "backslash":
            entries.append(["", 1.0])
        elif kind == "open":
            (round_open if match.group() == "(" else square_open).append(len(entries))
        elif kind == "weight" and round_open:
            number = match.group("weight")
            try:
                factor = float(number)
            except ValueError:
                raise ValueError(
                    f"malformed attention weight {number!r} in prompt {text!r}: AUTOMATIC1111 fails on it too"
                ) from None
            scale_from(round_open.pop(), factor)
        elif kind == "close" and match.group() == ")" and round_open:
            scale_from(round_open.pop(), ROUND)
        elif kind == "close" and match.group() == "]" and square_open:
            scale_from(square_open.pop(), SQUARE)
        else:  # text, or a bracket / ":w)" with nothing to close
            for index, part in enumerate(_BREAK.split(match.group())):
                if index:
                    entries.append(list(BREAK_MARKER))
                entries.append([part, 1.0])

    for start in round_open:
        scale_from(start, ROUND)
    for start in square_open:
        scale_from(start, SQUARE)
    if not entries:
        return [("", 1.0)]

    merged = [entries[0]]
    for entry in entries[1:]:
        if entry[1] == merged[-1][1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    return [(entry_text, weight) for entry_text, weight in merged]


def is_break(text: str, weight: float) -> bool:
    """A1111's chunker treats an entry as a break exactly when it is `("BREAK", -1)`."""
    return text == BREAK_MARKER[0] and weight == BREAK_MARKER[1]


def prepare_prompt(prompt: str, negative: bool = False) -> str:
    """What A1111 encodes for a prompt. A positive prompt loses its extra-network tags and a trailing `:1`
    composable weight; AND and other composable weights are refused. Prompt editing and alternation, which A1111
    resolves per sampling step in both prompts, are refused."""
    text = prompt
    if not negative:
        tags = _EXTRA_NETWORK.findall(text)
        if tags:
            warnings.warn(
                f"removed extra-network tags {['<%s:%s>' % tag for tag in tags]} from the prompt as A1111 does; "
                "load LoRAs into the pipeline yourself (pipe.load_lora_weights)",
                stacklevel=3,
            )
            text = _EXTRA_NETWORK.sub("", text)
        if len(_AND.split(text)) > 1:
            raise ValueError(
                f"prompt {prompt!r} uses AND (A1111's composable diffusion), which combines several noise "
                "predictions while sampling; one embedding cannot represent it"
            )
        match = _COMPOSABLE_WEIGHT.search(text)  # no match when a newline stops ".": the prompt stays whole
        if match is not None:
            text, weight = match.groups()
            if weight is not None and float(weight) != 1.0:
                raise ValueError(
                    f"prompt {prompt!r} ends in ':{weight}', which A1111 reads as a composable-diffusion weight "
                    "scaling the guidance of the whole prompt; one embedding cannot represent it (wrap the text in "
                    "brackets to weight it)"
                )
    unescaped = _ESCAPE.sub("_", text)
    if _ALTERNATION.search(unescaped) or _SCHEDULE.search(unescaped):
        raise ValueError(
            f"prompt {prompt!r} uses prompt editing [a:b:when] or alternation [a|b], which A1111 resolves per "
            "sampling step; encode the prompt of each step yourself"
        )
    return text


def chunk_a1111(
    fragments: Sequence[tuple[str, float]],
    tokenizer,
    chunk_length: int = 75,
    comma_backtrack: int = DEFAULT_COMMA_BACKTRACK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and weights of `(text, weight)` fragments as A1111 chunks them: two `(chunks, chunk_length + 2)`
    tensors. A fragment with weight `None` is a chunk break. BOS, EOS and padding have weight 1. See the module
    docstring for the rules.
    """
    if comma_backtrack < 0:
        raise ValueError(f"comma_backtrack must be >= 0, got {comma_backtrack}")
    texts = [text for text, weight in fragments if weight is not None]
    token_lists = iter(fragment_token_ids(tokenizer, texts))
    comma = comma_token_id(tokenizer)
    expansions = multi_vector_expansions(tokenizer)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, pad_id(tokenizer)

    rows: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close_chunk():
        nonlocal ids, weights, last_comma
        fill = chunk_length - len(ids)
        row = [bos, *ids, *[eos] * (fill + 1)]
        if pad != eos:  # SD-2 style: positions after the first EOS hold the pad token
            first_eos = row.index(eos)
            row[first_eos + 1 :] = [pad] * (len(row) - first_eos - 1)
        rows.append((row, [1.0, *weights, *[1.0] * (fill + 1)]))
        ids, weights, last_comma = [], [], -1

    for _, weight in fragments:
        if weight is None:
            close_chunk()
            continue
        for token in next(token_lists):
            if token == comma:
                last_comma = len(ids)
            elif (comma_backtrack and len(ids) == chunk_length and last_comma != -1
                  and len(ids) - last_comma <= comma_backtrack):
                keep = last_comma + 1
                moved_ids, moved_weights = ids[keep:], weights[keep:]
                ids, weights = ids[:keep], weights[:keep]
                close_chunk()
                ids, weights = moved_ids, moved_weights
            if len(ids) == chunk_length:
                close_chunk()
            unit = expansions.get(token, (token,))
            if len(ids) + len(unit) > chunk_length:
                close_chunk()
            ids.extend(unit)
            weights.extend([weight] * len(unit))
    if ids or not rows:
        close_chunk()

    return (torch.tensor([row for row, _ in rows], dtype=torch.long),
            torch.tensor([w for _, w in rows], dtype=torch.float32))


def tokenize_a1111(
    prompt: str,
    tokenizer,
    chunk_length: int = 75,
    comma_backtrack: int = DEFAULT_COMMA_BACKTRACK,
    emphasis: str = "Original",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`parse_a1111` (skipped when `emphasis="None"`) then `chunk_a1111`."""
    check_emphasis(emphasis)
    if emphasis == "None":
        fragments = [(prompt, 1.0)]
    else:
        fragments = [(text, None if is_break(text, weight) else weight) for text, weight in parse_a1111(prompt)]
    return chunk_a1111(fragments, tokenizer, chunk_length, comma_backtrack)


def check_emphasis(emphasis: str):
    if emphasis not in EMPHASES:
        raise ValueError(f"emphasis must be one of {', '.join(map(repr, EMPHASES))}, got {emphasis!r}")


def emphasize(hidden: torch.Tensor, weights: torch.Tensor, emphasis: str = "Original") -> torch.Tensor:
    """Applies A1111's emphasis to `(chunks, positions, channels)` hidden states, each chunk on its own.

    "Original": `z * w`, then `z * (mean(z) / mean(z * w))` with means over the chunk's positions and channels;
    "No norm": `z * w`; "Ignore" and "None": unchanged. Chunks whose weights are all 1 come back unchanged. The
    weights are float32, so the product is at least float32
    (as in A1111, where the multipliers are a float32 tensor); the result is cast back to the input dtype.
    """
    check_emphasis(emphasis)
    if emphasis in ("Ignore", "None"):
        return hidden
    weights = weights.to(device=hidden.device, dtype=torch.float32)
    chunks = []
    for z, w in zip(hidden, weights):  # one chunk at a time: A1111 takes the mean of one chunk's tensor
        if bool((w == 1).all()):
            # A1111's formula returns these bits too (z * 1, then a ratio of equal means, exactly 1), except for a
            # chunk whose mean is exactly 0, where it divides 0 by 0
            chunks.append(z)
            continue
        weighted = z * w[:, None]
        if emphasis == "Original":
            weighted = weighted * (z.mean() / weighted.mean())
        chunks.append(weighted.to(hidden.dtype))
    return torch.stack(chunks)


__all__ = [
    "BREAK_MARKER",
    "DEFAULT_COMMA_BACKTRACK",
    "EMPHASES",
    "chunk_a1111",
    "emphasize",
    "is_break",
    "parse_a1111",
    "prepare_prompt",
    "tokenize_a1111",
]

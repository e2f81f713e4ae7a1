r"""The "balanced" prompt syntax: A1111's brackets, but only pairs weight text.

These were dualclip's rules before `syntax="a1111"` (exact, and the default) existed. They differ from A1111 where
A1111's behaviour surprises: a bracket without a partner is literal text instead of weighting the rest of the
prompt, `(text: 0.5 )` may have spaces around the number, fragments separated by brackets are tokenized apart
(`(red)(car)` is not merged into "redcar"), `BREAK` is a marker wherever it stands, and a malformed weight is
text, never an error. Chunking and emphasis are A1111's, without comma backtracking.
"""

from __future__ import annotations

import re

BREAK = "BREAK"
"""Text of the marker that `parse_prompt_weights` returns (with weight `None`) where a prompt says `BREAK`."""

ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
# One lexical item per match. Order matters: an escape before a bracket, a weighted close before ":" as text,
# BREAK (with the spaces around it) before a space as text. Text runs stop at "B" and whitespace so that the
# BREAK alternative gets a chance at every word start.
_LEXER = re.compile(
    r"(?P<escape>\\[()\[\]\\])"
    rf"|(?P<weighted_close>:\s*(?P<weight>{_NUMBER})\s*\))"
    r"|(?P<open>[(\[])"
    r"|(?P<close>[)\]])"
    r"|(?P<brk>\s*\bBREAK\b\s*)"
    r"|(?P<text>[^\\()\[\]:B\s]+|.)",
    re.S,
)
_PARTNER = {")": "(", "]": "["}


def parse_prompt_weights(text: str) -> list[tuple[str, float | None]]:
    r"""Splits a prompt into `(text, weight)` fragments; `(BREAK, None)` marks a `BREAK`.

    Rules:
    - `(x)` multiplies the weight of `x` by 1.1, `[x]` divides it by 1.1, `(x:w)` multiplies it by `w` (a decimal
      number, sign allowed; spaces around it allowed); groups nest and multiply.
    - A closing bracket pairs with the nearest unpaired opening bracket of its kind; opening brackets between the
      two are left unpaired. Every unpaired bracket (and a `:w)` that closes nothing) is literal text. Parsing
      never fails.
    - `\(`, `\)`, `\[`, `\]` and `\\` stand for the character itself; any other backslash is literal.
    - `BREAK`, upper case and a word of its own, ends the current chunk; the spaces around it are dropped.

    Text is split only where the weight changes or a bracket or `BREAK` stood (brackets are word boundaries), and
    empty fragments are dropped, so an empty prompt gives `[]`.

    >>> parse_prompt_weights(r"a (red:1.5) [car] \(x\) BREAK b")
    [('a ', 1.0), ('red', 1.5), (' ', 1.0), ('car', 0.9090909090909091), (' (x)', 1.0), ('BREAK', None), ('b', 1.0)]
    """
    # items: [kind, text, multiplier]; kind is "text", "open", "close" or "break".
    items: list[list] = []
    for match in _LEXER.finditer(text):
        kind = match.lastgroup
        if kind == "escape":
            items.append(["text", match.group()[1], 1.0])
        elif kind == "weighted_close":
            items.append(["close", match.group(), float(match.group("weight"))])
        elif kind == "open":
            items.append(["open", match.group(), None])
        elif kind == "close":
            multiplier = ROUND_BRACKET_MULTIPLIER if match.group() == ")" else SQUARE_BRACKET_MULTIPLIER
            items.append(["close", match.group(), multiplier])
        elif kind == "brk":
            items.append(["break", BREAK, None])
        else:
            items.append(["text", match.group(), 1.0])

    weights = [1.0] * len(items)
    open_stack: list[int] = []
    for index, (kind, raw, multiplier) in enumerate(items):
        if kind == "open":
            open_stack.append(index)
        elif kind == "close":
            wanted = _PARTNER[raw[-1]]
            depth = next((d for d in range(len(open_stack) - 1, -1, -1) if items[open_stack[d]][1] == wanted), None)
            if depth is None:
                items[index][0] = "text"
                continue
            start = open_stack[depth]
            for unpaired in open_stack[depth + 1 :]:
                items[unpaired][0] = "text"
            del open_stack[depth:]
            for inner in range(start + 1, index):
                weights[inner] *= multiplier
            items[start][0] = items[index][0] = "paired"
    for unpaired in open_stack:
        items[unpaired][0] = "text"

    # Text runs merge only when nothing stood between them in the prompt: a bracket is a word boundary, so
    # "(red)(car)" stays two fragments (tokenized apart, as CLIP would split them) rather than "redcar".
    fragments: list[tuple[str, float | None]] = []
    mergeable = False
    for (kind, raw, _), weight in zip(items, weights):
        if kind == "break":
            fragments.append((BREAK, None))
        elif kind == "text" and raw:
            if mergeable and fragments[-1][1] == weight:
                fragments[-1] = (fragments[-1][0] + raw, weight)
            else:
                fragments.append((raw, weight))
        mergeable = kind == "text" and bool(fragments) and fragments[-1][1] is not None
    return fragments


__all__ = ["BREAK", "parse_prompt_weights"]

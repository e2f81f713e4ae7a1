r"""compel's prompt syntax and weighting (the `compel` package, MIT), re-implemented without depending on it.

**Syntax** (`parse_compel`). A word or group is weighted by a suffix written against it: `word+`, `word++`, `word-`
(1.1 or 0.9 per sign), `(several words)1.3`, `"quoted words"0.8`, `(group)+`, or `.attend(w)`. Brackets alone only
group (`(a b)` is weight 1). Weights nest by multiplication. `("a cat", "a dog").blend(0.7, 0.3)` mixes the
embeddings of whole prompts (weights normalised unless the last option is `no_normalize`); `("a cat", "a dog").and()`
(or `.add()`) concatenates them, each optionally weighted (`.and(1, 0.5)`). `\(`, `\)` and `\"` are literal;
`withLora(name, w)` is dropped (compel leaves LoRAs to the caller). `.swap()` (prompt-to-prompt) needs cross-attention
control inside the pipeline and is refused. compel inserts a space after every comma followed by a non-space, and
joins adjacent fragments of equal weight with a space.

The parser is a recursive-descent reading of compel's pyparsing grammar: ordered choice, greedy repetition, leading
whitespace skipped before every element except a top-level free word and the inside of a word, a parse failure
inside quotes falling back to the next alternative. Inputs compel cannot parse raise `ValueError` here.

**Weighting** (`CompelEncoder`), per text encoder. Tokens of all fragments are concatenated and cut into chunks of
75: at the last `.` within the first 75 tokens, else the last `,` `.` `;` `:`, else the last word end, else at 75.
Each chunk is `[BOS] tokens [EOS] [pad...]`, encoded with an all-ones attention mask. A token of weight `w != 1`
becomes `empty + (z - empty) * w`, with `empty` the empty prompt's states at the same position. For each fragment of
weight `w < 1` the prompt is encoded once more with that fragment masked out of attention (chunk starts and ends kept),
and the result is the average of these encodings weighted `1` (the full prompt) and `tan((1 - w) * pi / 2)` (each
masked one), normalised. Blends are weighted sums of padded prompt embeddings; conjunction parts of weight `w != 1` are
moved from the empty prompt's embedding by `w`. Texts are padded to a common length with the empty prompt's
embedding. SDXL's pooled embedding is that of the raw prompt text, truncated to one chunk.
"""

from __future__ import annotations

import math
import re
import string
import warnings
from dataclasses import dataclass, field

import torch

from .conditioning_tokens import fragment_token_ids, multi_vector_expansions, pad_id

PLUS, MINUS = 1.1, 0.9

_SKIP = " \n\t\r"  # pyparsing's default whitespace, skipped before elements
_STRING_WHITESPACE = string.whitespace  # what a word cannot contain
_WHITE = " \t\r\n"  # what pyparsing's White() matches
_OTHER_WHITE = "\x0c\xa0\u1680\u180e\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u200b\u202f\u205f\u3000"
_SYNTACTIC = '()",.+-='
_ESCAPED = ("\\(", "\\)", '\\"', "\\,", "\\.", "\\+", "\\-", "\\=")
_KEYWORD_CHARS = set(string.ascii_letters + string.digits + "_-")
_REAL = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_INT = re.compile(r"-?\d+")
_QUOTED = re.compile(r'"(?:\\"|[^"\n\r])*"')
_QUOTE_ESCAPES = {"\\t": "\t", "\\n": "\n", "\\f": "\f", "\\r": "\r", "\\0": "\0"}
_COMMA_SPACE = re.compile(r",(\S)")


# ---- parse tree ------------------------------------------------------------------------------------------------------


def _unescape(text: str) -> str:
    """compel's `Fragment` turns `\\(`, `\\)` and `\\"` into the character, each time a fragment is made: when parsed,
    again when flattened, again when fused with a neighbour (so `\\\\)` ends up as `)`)."""
    return text.replace("\\(", "(").replace("\\)", ")").replace('\\"', '"')


@dataclass
class _Fragment:
    text: str
    weight: float = 1.0

    def __post_init__(self):
        self.text = _unescape(self.text)


@dataclass
class _Attention:
    weight: float
    children: list


@dataclass
class _Lora:
    name: str


@dataclass
class _Swap:
    pass


@dataclass
class _Prompt:
    children: list


@dataclass
class _Blend:
    prompts: list
    weights: list
    normalize: bool = True


@dataclass
class _Conjunction:
    prompts: list
    weights: list = field(default_factory=list)


@dataclass
class Blend:
    """A `.blend()` of prompts: each a list of `(text, weight)` fragments."""

    prompts: list[list[tuple[str, float]]]
    weights: list[float]
    normalize: bool = True


CompelPart = "list[tuple[str, float]] | Blend"


class _Parser:
    """compel's grammar over one string. Each rule takes a position and returns `(position, value)`, or `None`
    when it does not match there (the caller tries its next alternative). Errors compel raises while building its
    objects (a weight that is not a number, counts that disagree) raise `ValueError` at once."""

    def __init__(self, text: str):
        self.s = text
        self.n = len(text)

    # -- terminals --

    def skip(self, loc):
        while loc < self.n and self.s[loc] in _SKIP:
            loc += 1
        return loc

    def literal(self, loc, text):
        loc = self.skip(loc)
        return loc + len(text) if self.s.startswith(text, loc) else None

    def not_white(self, loc):
        """pyparsing's NotAny(White()): other Unicode spaces are passed over, then no space, tab or newline."""
        while loc < self.n and self.s[loc] in _OTHER_WHITE:
            loc += 1
        return not (loc < self.n and self.s[loc] in _WHITE)

    def signs(self, loc, sign):
        loc = self.skip(loc)
        end = loc
        while end < self.n and self.s[end] == sign:
            end += 1
        return (end, self.s[loc:end]) if end > loc else None

    def number(self, loc):
        loc = self.skip(loc)
        match = _REAL.match(self.s, loc) or _INT.match(self.s, loc)
        return (match.end(), float(match.group())) if match else None

    def keyword(self, loc):
        loc = self.skip(loc)
        end = loc
        while end < self.n and self.s[end] in _KEYWORD_CHARS:
            end += 1
        return (end, self.s[loc:end]) if end > loc else None

    def word(self, loc):
        """A word free of syntax: escaped syntax characters, a sign followed by a word character, or any character
        that is neither whitespace nor syntax; no whitespace inside."""
        loc = start = self.skip(loc)
        s, n = self.s, self.n
        while loc < n:
            if s[loc : loc + 2] in _ESCAPED:
                loc += 2
            elif s[loc] in "+-" and loc + 1 < n and s[loc + 1] not in _WHITE and s[loc + 1] not in _SYNTACTIC:
                loc += 1
            elif s[loc] not in _STRING_WHITESPACE and s[loc] not in _SYNTACTIC:
                loc += 1
            else:
                break
        return (loc, [_Fragment(s[start:loc])]) if loc > start else None

    def free_word(self, loc):
        end = loc
        while end < self.n and self.s[end] not in _STRING_WHITESPACE:
            end += 1
        return (end, [_Fragment(self.s[loc:end])]) if end > loc else None

    def white(self, loc):
        while loc < self.n and self.s[loc] in _OTHER_WHITE:
            loc += 1
        end = loc
        while end < self.n and self.s[end] in _WHITE:
            end += 1
        return (end, []) if end > loc else None

    def quoted(self, loc, inner):
        """A double-quoted string whose content parses completely with the rule `inner`."""
        loc = self.skip(loc)
        match = _QUOTED.match(self.s, loc)
        if match is None:
            return None
        content = re.sub(r"\\[tnfr0]", lambda m: _QUOTE_ESCAPES[m.group()], match.group()[1:-1])
        content = content.replace('\\"', '"')
        if not content.strip():
            return match.end(), [_Fragment("")]
        sub = _Parser(content.replace('"', '\\"'))
        result = getattr(sub, inner)(0)
        if result is None or sub.skip(result[0]) != sub.n:
            return None
        return match.end(), result[1]

    # -- rules --

    def first(self, loc, *rules):
        for rule in rules:
            result = rule(loc)
            if result is not None:
                return result
        return None

    def repeat(self, loc, *rules):
        values = []
        while (result := self.first(loc, *rules)) is not None:
            loc, value = result
            values.extend(value)
        return loc, values

    def fragment_with_commas(self, loc):
        return self.repeat(loc, self.lora, self.attention, self.swap, self.parenthesized, self.quoted_fragment,
                           self.word, self.comma_or_period)

    def fragment_without_commas(self, loc):
        return self.repeat(loc, self.lora, self.attention, self.swap, self.parenthesized, self.quoted_fragment,
                           self.word)

    def comma_or_period(self, loc):
        for mark in ",.":
            end = self.literal(loc, mark)
            if end is not None:
                return end, [_Fragment(mark)]
        return None

    def quoted_fragment(self, loc):
        return self.quoted(loc, "fragment_with_commas")

    def quoted_prompt(self, loc):
        return self.quoted(loc, "prompt")

    def parenthesized(self, loc):
        loc = self.literal(loc, "(")
        if loc is None:
            return None
        loc, values = self.fragment_with_commas(loc)
        loc = self.literal(loc, ")")
        return None if loc is None else (loc, values)

    def target(self, loc):
        return self.first(loc, self.quoted_fragment, self.parenthesized, self.word)

    def weight_operator(self, loc):
        return self.first(loc, lambda at: self.signs(at, "+"), lambda at: self.signs(at, "-"), self.number)

    @staticmethod
    def attention_node(weight, children):
        if isinstance(weight, str):
            weight = pow(PLUS if weight[0] == "+" else MINUS, len(weight))
        return [_Attention(weight, children)]

    def attention(self, loc):
        # explicit: target.attend(weight)
        result = self.target(loc)
        if result is not None:
            end, children = result
            end = self.literal(end, ".attend")
            end = None if end is None else self.literal(end, "(")
            operator = None if end is None else self.weight_operator(end)
            if operator is not None:
                end = self.literal(operator[0], ")")
                if end is not None:
                    return end, self.attention_node(operator[1], children)
        # implicit: "quoted"1.2, (group)++, written against the weight
        result = self.first(loc, self.quoted_fragment, self.parenthesized)
        if result is not None and self.not_white(result[0]):
            operator = self.weight_operator(result[0])
            if operator is not None:
                return operator[0], self.attention_node(operator[1], result[1])
        # implicit: word+, word--
        result = self.word(loc)
        if result is not None and self.not_white(result[0]):
            operator = self.first(result[0], lambda at: self.signs(at, "+"), lambda at: self.signs(at, "-"))
            if operator is not None:
                return operator[0], self.attention_node(operator[1], result[1])
        return None

    def options(self, loc):
        """`Optional(delimited list of option)`; each option a tuple of strings."""
        first = self.option(loc)
        if first is None:
            return loc, []
        loc, values = first[0], [first[1]]
        while True:
            comma = self.literal(loc, ",")
            following = None if comma is None else self.option(comma)
            if following is None:
                return loc, values
            loc = following[0]
            values.append(following[1])

    def option(self, loc):
        key = self.keyword(loc)
        if key is not None:
            equals = self.literal(key[0], "=")
            if equals is not None:
                value = self.number(equals) or self.keyword(equals)
                if value is not None:
                    return value[0], (key[1], str(value[1]))
        number = self.number(loc)
        if number is not None:
            return number[0], (str(number[1]),)
        return None if key is None else (key[0], (key[1],))

    def swap(self, loc):
        result = self.target(loc)
        if result is None:
            return None
        end = self.literal(result[0], ".swap")
        end = None if end is None else self.literal(end, "(")
        if end is None:
            return None
        end, _ = self.fragment_without_commas(end)
        comma = self.literal(end, ",")
        if comma is not None:
            end = self.options(comma)[0]
        end = self.literal(end, ")")
        return None if end is None else (end, [_Swap()])

    def lora(self, loc):
        end = self.literal(loc, "useLora")
        if end is None:
            end = self.literal(loc, "withLora")
        end = None if end is None else self.literal(end, "(")
        name = None if end is None else self.keyword(end)
        if name is None:
            return None
        end = name[0]
        comma = self.literal(end, ",")
        weight = None if comma is None else self.number(comma)
        if weight is not None:
            end = weight[0]
        end = self.literal(end, ")")
        return None if end is None else (end, [_Lora(name[1])])

    def prompt(self, loc):
        return self.repeat(loc, self.swap, self.lora, self.attention, self.quoted_fragment, self.parenthesized,
                           self.free_word, self.white)

    def operator_targets(self, loc, operators):
        """`(target, target, ...).operator(options)`: the targets, the operator and the option tuples."""
        loc = self.literal(loc, "(")
        if loc is None:
            return None
        targets = []
        while True:
            item = self.first(loc, self.target, self.quoted_prompt)
            if item is None:
                if not targets:
                    return None
                break
            targets.append(item[1])
            loc = item[0]
            comma = self.literal(loc, ",")
            if comma is None or self.first(comma, self.target, self.quoted_prompt) is None:
                break
            loc = comma
        loc = self.literal(loc, ")")
        if loc is None:
            return None
        for operator in operators:
            end = self.literal(loc, operator)
            if end is not None:
                break
        else:
            return None
        end = self.literal(end, "(")
        if end is None:
            return None
        end, options = self.options(end)
        end = self.literal(end, ")")
        return None if end is None else (end, (targets, operator, options))

    def blend(self, loc):
        result = self.operator_targets(loc, (".blend",))
        if result is None:
            return None
        end, (targets, _, options) = result
        normalize = True
        if options and options[-1][0] == "no_normalize":
            normalize, options = False, options[:-1]
        weights = [_option_float(option) for option in options]
        return end, _Blend([_Prompt(t) for t in targets], _check_counts(targets, weights, "blend"), normalize)

    def conjunction(self):
        """The whole prompt: an explicit `.and()` (text after it is ignored, as in compel), or LoRA tags around a
        blend or a plain prompt that must reach the end."""
        result = self.operator_targets(0, (".and", ".add"))
        if result is not None:
            _, (targets, _, options) = result
            weights = [_option_float(option) for option in options]
            return _Conjunction([_Prompt(t) for t in targets], _check_counts(targets, weights, "and"))
        loc, parts = 0, []
        loras = self.repeat(loc, self.lora)
        if loras[1]:
            loc = loras[0]
            parts.append(_Prompt(loras[1]))
        main = self.blend(loc)
        if main is None:
            loc, children = self.prompt(loc)
            parts.append(_Prompt(children))
        else:
            loc = main[0]
            parts.append(main[1])
        loras = self.repeat(loc, self.lora)
        if loras[1]:
            loc = loras[0]
            parts.append(_Prompt(loras[1]))
        if self.skip(loc) != self.n:
            raise ValueError(f"compel cannot parse this prompt past character {self.skip(loc)}: {self.s!r}")
        return _Conjunction(parts, [1.0] * len(parts))


def _option_float(option: tuple) -> float:
    try:
        return float(option[0])
    except ValueError:
        raise ValueError(f"compel option {option[0]!r} is not a weight") from None


def _check_counts(targets, weights, operator):
    if weights and len(weights) != len(targets):
        raise ValueError(f".{operator}() got {len(targets)} prompts but {len(weights)} weights")
    return weights or [1.0] * len(targets)


# ---- flattening --------------------------------------------------------------------------------------------------


def _flatten(node, scale: float, loras: list) -> list:
    """compel's flatten: fragments carry the product of their enclosing weights; a prompt's fragments of equal
    weight are fused with a space."""
    if isinstance(node, list):
        return [item for child in node for item in _flatten(child, scale, loras)]
    if isinstance(node, _Attention):
        return [item for child in node.children for item in _flatten(child, scale * node.weight, loras)]
    if isinstance(node, _Lora):
        loras.append(node.name)
        return []
    if isinstance(node, _Fragment):
        return [(_unescape(node.text), node.weight * scale)]
    if isinstance(node, _Swap):
        raise ValueError(".swap() (prompt-to-prompt) needs cross-attention control inside the pipeline; one "
                         "embedding cannot represent it")
    if isinstance(node, _Blend):
        prompts = [part for prompt in node.prompts for part in _flatten(prompt, scale, loras)]
        if len(prompts) != len(node.weights):
            raise ValueError(f".blend() got {len(prompts)} non-empty prompts but {len(node.weights)} weights")
        return [Blend(prompts, node.weights, node.normalize)]
    if isinstance(node, _Prompt):
        fused: list[tuple[str, float]] = []
        for text, weight in _flatten(node.children, scale, loras):
            if fused and fused[-1][1] == weight:
                fused[-1] = (_unescape(fused[-1][0] + " " + text), weight)
            else:
                fused.append((text, weight))
        return [fused] if fused else []
    raise TypeError(f"unexpected node {node!r}")


def parse_compel(prompt: str) -> list[tuple[list[tuple[str, float]] | Blend, float]]:
    """compel's reading of a prompt: a list of `(part, weight)` conjunction parts, each part a list of
    `(text, weight)` fragments or a `Blend`. A prompt without `.and()` is one part of weight 1.

    >>> parse_compel("a cat++ in a (dark forest)0.8")
    [([('a', 1.0), ('cat', 1.2100000000000002), ('in a', 1.0), ('dark forest', 0.8)], 1.0)]
    """
    text = _COMMA_SPACE.sub(r", \1", prompt)
    if not text.strip():
        return [([("", 1.0)], 1.0)]
    root = _Parser(text).conjunction()
    loras: list = []
    parts = []
    for part, weight in zip(root.prompts, root.weights):
        for flattened in _flatten(part, 1.0, loras):
            parts.append((flattened, weight))
    if loras:
        warnings.warn(f"dropped withLora/useLora terms {loras} as compel does; load LoRAs into the pipeline yourself",
                      stacklevel=2)
    if not parts:
        raise ValueError(f"prompt {prompt!r} has nothing to encode")
    return parts


# ---- encoding ------------------------------------------------------------------------------------------------------

_SENTENCE_ENDS = {".</w>"}
_PHRASE_ENDS = {".</w>", ",</w>", ";</w>", ":</w>"}


def split_point(tokenizer, ids: list[int], length: int) -> int:
    """Where compel cuts a run of tokens longer than `length`: after the last sentence end within the first
    `length` tokens, else after the last phrase end, else after the last word end, else at `length`."""
    if len(ids) <= length:
        return length
    tokens = tokenizer.convert_ids_to_tokens(ids[:length])
    for accept in (_SENTENCE_ENDS.__contains__, _PHRASE_ENDS.__contains__, lambda t: t.endswith("</w>")):
        for index in range(len(tokens) - 1, -1, -1):
            if accept(tokens[index]):
                return index + 1
    return length


class CompelEncoder:
    """compel's embeddings of parsed prompts for one tokenizer and text encoder (a `TextEncoderRunner`).

    Multi-vector textual-inversion tokens (`<t>`, `<t>_1`, ...) expand to all their vectors, as compel does when
    given its `DiffusersTextualInversionManager` (`expand_textual_inversion=False`: compel without one).
    """

    def __init__(self, runner, expand_textual_inversion: bool = True):
        self.runner = runner
        self.tokenizer = runner.tokenizer
        self.context = runner.chunk_length + 2
        self.expansions = multi_vector_expansions(self.tokenizer) if expand_textual_inversion else {}
        self.pad = pad_id(self.tokenizer)
        self._empty = None

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return [[i for token in ids for i in self.expansions.get(token, (token,))]
                for ids in fragment_token_ids(self.tokenizer, texts)]

    @property
    def empty(self) -> torch.Tensor:
        """The empty prompt's states `(positions, channels)`: `[BOS] [EOS] [pad...]`, no attention mask."""
        if self._empty is None:
            ids = [self.tokenizer.bos_token_id, self.tokenizer.eos_token_id] + [self.pad] * (self.context - 2)
            self._empty = self.runner(torch.tensor([ids]))[0][0]
        return self._empty

    def encode(self, parts) -> torch.Tensor:
        """`(positions, channels)` for the output of `parse_compel`."""
        pieces = []
        empty_conditioning = None
        for part, weight in parts:
            conditioning = self.blend(part) if isinstance(part, Blend) else self.fragments(part)
            if weight != 1:
                if empty_conditioning is None:
                    empty_conditioning = self.fragments([("", 1.0)])
                padded_empty = self.pad_to([empty_conditioning], conditioning.shape[0])[0]
                conditioning = padded_empty + (conditioning - padded_empty) * weight
            pieces.append(conditioning)
        return torch.cat(pieces)

    def pad_to(self, embeddings: list[torch.Tensor], length: int | None = None) -> list[torch.Tensor]:
        """Appends copies of the empty prompt's states until each tensor has `length` (default: the longest)."""
        length = max(e.shape[0] for e in embeddings) if length is None else length
        out = []
        for e in embeddings:
            while e.shape[0] < length:
                e = torch.cat([e, self.empty.to(e.dtype)])
            out.append(e)
        return out

    def blend(self, blend: Blend) -> torch.Tensor:
        stacked = torch.stack(self.pad_to([self.fragments(p) for p in blend.prompts]))[None]
        weights = torch.tensor(blend.weights, dtype=stacked.dtype, device=stacked.device)
        if blend.normalize:
            weights = weights / torch.sum(weights)
        return torch.sum(stacked * weights.reshape(weights.shape + (1, 1)), dim=1)[0]

    def chunks(self, fragments):
        """Token ids, weights and attention mask of the fragments, chunked: three flat tensors."""
        texts = [text for text, _ in fragments] or [""]
        weights = [weight for _, weight in fragments] or [1.0]
        ids, token_weights = [], []
        for fragment_ids, weight in zip(self.token_ids(texts), weights):
            ids += fragment_ids
            token_weights += [float(weight)] * len(fragment_ids)
        length = self.context - 2
        all_ids, all_weights = [], []
        while True:
            cut = split_point(self.tokenizer, ids, length)
            chunk, ids = ids[:cut], ids[cut:]
            chunk_weights, token_weights = token_weights[:cut], token_weights[cut:]
            fill = self.context - len(chunk) - 2
            all_ids += [self.tokenizer.bos_token_id, *chunk, self.tokenizer.eos_token_id] + [self.pad] * fill
            all_weights += [1.0, *chunk_weights, 1.0] + [1.0] * fill
            if not ids:
                break
        return (torch.tensor(all_ids), torch.tensor(all_weights, dtype=torch.float32),
                torch.ones(len(all_ids), dtype=torch.long))

    def weighted(self, ids, weights, mask) -> torch.Tensor:
        """Each chunk encoded alone; tokens of weight `w != 1` moved from the empty prompt's states by `w`."""
        out = []
        for start in range(0, ids.shape[0], self.context):
            window = slice(start, start + self.context)
            z = self.runner(ids[window][None], mask[window][None])[0][0]
            w = weights[window][:, None].expand(z.shape).to(z.device)
            identity = w == 1
            if bool(identity.all()):
                out.append(z)
            else:
                empty = self.empty.to(z.device)
                out.append(torch.where(identity, z, empty + (z - empty) * w))
        return torch.cat(out)

    def fragment_ranges(self, all_ids: list[int], fragments) -> list[tuple[int, int] | None]:
        """Where each fragment's tokens sit in the chunked ids (first and last index), chunk boundaries allowed
        inside; `None` for a fragment without tokens."""
        boundary = {self.tokenizer.eos_token_id, self.pad, self.tokenizer.bos_token_id}
        ranges, start = [], 0
        for fragment_ids in self.token_ids([text for text, _ in fragments]):
            if not fragment_ids:
                ranges.append(None)
                continue
            while True:
                if start >= len(all_ids) - 1:
                    raise ValueError(f"compel cannot locate the tokens of fragment {fragment_ids}")
                if all_ids[start] == fragment_ids[0]:
                    break
                start += 1
            end, matched = start, 0
            while True:
                if end >= len(all_ids) - 1:
                    raise ValueError(f"compel cannot locate the end of fragment {fragment_ids}")
                if all_ids[end] == fragment_ids[matched]:
                    matched += 1
                    if matched == len(fragment_ids):
                        break
                    end += 1
                elif all_ids[end] in boundary:
                    end += 1
                else:
                    raise ValueError(f"compel's token sequence mismatch for fragment {fragment_ids}")
            ranges.append((start, end))
            start = end + 1
        return ranges

    def fragments(self, fragments: list[tuple[str, float]]) -> torch.Tensor:
        """compel's embedding of one flattened prompt: `(chunks * context, channels)`."""
        ids, weights, mask = self.chunks(fragments)
        embeddings = [self.weighted(ids, weights, mask)]
        lerp_weights = [1.0]
        ranges = self.fragment_ranges(ids.tolist(), fragments)
        for (_, weight), where in zip(fragments, ranges):
            if weight >= 1:
                continue
            if where is None:
                raise ValueError("compel cannot down-weight a fragment without tokens")
            without = mask.clone()
            without[where[0] : where[1] + 1] = 0
            without[0 :: self.context] = 1  # chunk starts and ends stay visible
            without[self.context - 1 :: self.context] = 1
            embeddings.append(self.weighted(ids, weights, without))
            lerp_weights.append(math.tan((1.0 - max(1e-5, weight)) * math.pi / 2))
        stacked = torch.stack(embeddings)[None]
        lerp = torch.tensor(lerp_weights, dtype=stacked.dtype, device=stacked.device)
        lerp = lerp / torch.sum(lerp)
        return torch.sum(stacked * lerp.reshape(lerp.shape + (1, 1)), dim=1)[0]

    def pooled(self, text: str) -> torch.Tensor | None:
        """The projected pooled embedding of the raw prompt text, truncated to one chunk (compel's SDXL pooled)."""
        tokenizer = self.tokenizer
        ids = tokenizer(text, truncation=True, max_length=self.context)["input_ids"]
        if ids and ids[0] == tokenizer.bos_token_id:
            ids = ids[1:]
        if ids and ids[-1] == tokenizer.eos_token_id:
            ids = ids[:-1]
        ids = [i for token in ids for i in self.expansions.get(token, (token,))][: self.context - 2]
        row = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
        row += [self.pad] * (self.context - len(row))
        return self.runner(torch.tensor([row]))[1]


__all__ = ["Blend", "CompelEncoder", "parse_compel", "split_point"]

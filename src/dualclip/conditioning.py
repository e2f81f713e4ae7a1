r"""Prompt encoding for diffusion pipelines: clip-skip, SDXL's pooled embedding, long prompts, prompt weights.

The result of [`PromptEncoder.encode`] goes straight into a diffusers pipeline call
(`prompt_embeds=`, `negative_prompt_embeds=`, and for SDXL `pooled_prompt_embeds=`,
`negative_pooled_prompt_embeds=`). It works with dualclip text encoders and with the stock transformers ones.

How a prompt becomes embeddings (each step is a function below, testable alone):

1. `parse_prompt_weights`: the weighting syntax, text only. `(text)` multiplies the weight by 1.1, `[text]` divides
   it by 1.1, `(text:1.3)` multiplies it by 1.3; groups nest. `\(`, `\)`, `\[`, `\]` and `\\` are literal
   characters. `BREAK` (upper case, a word of its own) ends the current chunk. A bracket without a partner is
   literal text.
2. `tokenize_weighted_prompt`: token ids and a weight per token, split into chunks of `model_max_length - 2` (75)
   tokens, each wrapped in BOS/EOS and padded with the tokenizer's pad token to `model_max_length` (77).
3. `PromptEncoder`: every chunk is encoded on its own, the layer the convention names is taken, the weights are
   applied (scale each token's hidden state by its weight, then rescale the chunk so that its mean is what it was
   before weighting, as A1111 does), and the chunks are concatenated along the sequence. The pooled embedding
   (SDXL) comes from the first chunk, unweighted. Positive and negative prompts are padded to the same number of
   chunks with empty chunks (BOS, EOS, padding).

Conventions (`convention=`), matching what diffusers' pipelines do with a prompt of at most 75 tokens:

| convention | encoders | token-level states | pooled |
|---|---|---|---|
| `"sd1"`, `"sd2"` | one | last layer after the final LayerNorm; with `clip_skip=k`, layer `-(k+1)` through the final LayerNorm | none |
| `"sdxl"` | two (or one: the refiner's second encoder) | layer `-(2+k)` of each, without final LayerNorm, concatenated | `text_embeds` of the last encoder |

SD-2 is computed like SD-1: diffusers' SD-2 text encoders already end one layer early, and their tokenizer pads
with `!` (id 0) where SD-1's pads with EOS, which the tokenizer itself says. `clip_skip` counts as in diffusers:
`clip_skip=1` is A1111's "Clip skip: 2".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

BREAK = "BREAK"
"""Text of the marker that `parse_prompt_weights` returns (with weight `None`) where a prompt says `BREAK`."""

ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1
CONVENTIONS = ("sd1", "sd2", "sdxl")

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


def chunk_length(tokenizer, text_encoder=None) -> int:
    """Tokens of prompt text per chunk: the context length (77 for CLIP) less BOS and EOS."""
    context = tokenizer.model_max_length
    if text_encoder is not None:
        context = min(context, text_encoder.config.max_position_embeddings)
    return context - 2


def tokenize_weighted_prompt(
    prompt: str, tokenizer, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and per-token weights of `prompt`, in chunks: two `(chunks, length + 2)` tensors (long, float32).

    The prompt's tokens are cut into runs of `length` (default `chunk_length(tokenizer)`, 75); `BREAK` also ends a
    run. Each run becomes `[BOS] tokens [EOS] [pad...]`; BOS, EOS and padding have weight 1. A `BREAK` at the end
    adds nothing; an empty prompt gives one empty chunk. Textual-inversion tokens with several vectors
    (`<tok>`, `<tok>_1`, ...) are expanded as diffusers' `maybe_convert_prompt` does.
    """
    length = chunk_length(tokenizer) if length is None else length
    fragments = parse_prompt_weights(prompt)
    texts = [text for text, weight in fragments if weight is not None]
    token_lists = iter(tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else [])
    expansions = _multi_vector_expansions(tokenizer)

    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []

    def close_chunk():
        nonlocal ids, weights
        chunks.append((ids, weights))
        ids, weights = [], []

    for _, weight in fragments:
        if weight is None:
            close_chunk()
            continue
        for token in next(token_lists):
            for expanded in expansions.get(token, (token,)):
                if len(ids) == length:
                    close_chunk()
                ids.append(expanded)
                weights.append(weight)
    if ids or not chunks:
        close_chunk()

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    all_ids = torch.full((len(chunks), length + 2), pad, dtype=torch.long)
    all_weights = torch.ones((len(chunks), length + 2), dtype=torch.float32)
    for row, (chunk_ids, chunk_weights) in enumerate(chunks):
        count = len(chunk_ids)
        all_ids[row, : count + 2] = torch.tensor([bos, *chunk_ids, eos])
        all_weights[row, 1 : count + 1] = torch.tensor(chunk_weights)
    return all_ids, all_weights


def _multi_vector_expansions(tokenizer) -> dict[int, list[int]]:
    """Maps the id of each multi-vector textual-inversion token `<t>` to the ids of `<t> <t>_1 <t>_2 ...`."""
    added = tokenizer.added_tokens_encoder
    expansions = {}
    for token, token_id in added.items():
        vector_ids = [token_id]
        while f"{token}_{len(vector_ids)}" in added:
            vector_ids.append(added[f"{token}_{len(vector_ids)}"])
        if len(vector_ids) > 1:
            expansions[token_id] = vector_ids
    return expansions


def apply_weights(hidden_states: torch.Tensor, weights: torch.Tensor, restore_mean: bool = True) -> torch.Tensor:
    """Scales each token's hidden state by its weight; with `restore_mean`, rescales each row to its old mean.

    `hidden_states` is `(rows, tokens, channels)`, `weights` `(rows, tokens)`. The mean is taken per row over tokens
    and channels, so a chunk's result does not depend on what else is in the batch. Rows whose weights are all 1
    are returned unchanged, bit for bit. Computed in float32, returned in the input dtype.
    """
    weights = weights.to(hidden_states.device)
    weighted_rows = (weights != 1).any(dim=-1)
    if not bool(weighted_rows.any()):
        return hidden_states
    states = hidden_states.float()
    scaled = states * weights[..., None].float()
    if restore_mean:
        old_mean = states.mean(dim=(1, 2), keepdim=True)
        new_mean = scaled.mean(dim=(1, 2), keepdim=True)
        # A mean that weighting drove to exactly zero cannot be restored by scaling; such rows stay scaled only.
        ratio = torch.where(new_mean == 0, torch.ones_like(new_mean), old_mean / new_mean)
        scaled = scaled * ratio
    return torch.where(weighted_rows[:, None, None], scaled.to(hidden_states.dtype), hidden_states)


def final_layer_norm(text_encoder) -> torch.nn.Module:
    """The final LayerNorm of a CLIP text encoder: dualclip's and transformers 4's `text_model.final_layer_norm`,
    or transformers 5's flat `CLIPTextModel.final_layer_norm`."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


class PromptEncoder:
    """Encodes weighted prompts of any length into the embeddings a diffusers pipeline takes.

    Args:
        tokenizers: one tokenizer, or a list with one per text encoder (SDXL: `[tokenizer, tokenizer_2]`).
        text_encoders: one text encoder, or a list (SDXL: `[text_encoder, text_encoder_2]`; the last one must
            output `text_embeds`, i.e. be a `*TextModelWithProjection`). dualclip or stock transformers models.
        convention: `"sd1"`, `"sd2"` or `"sdxl"` (see the module docstring).
        clip_skip: layers to skip from the end, as diffusers' `clip_skip` (`None` or 0: none). It applies to the
            negative prompt too, as in A1111; diffusers' own `encode_prompt` skips layers for the prompt only.
        restore_mean: after weighting, rescale each chunk to its unweighted mean (A1111). `False`: scale only.
        zero_empty_negative: when `negative_prompt` is `None`, return zeros as the negative embeddings instead of
            encoding `""`. Defaults to `True` for `"sdxl"` (SDXL's `force_zeros_for_empty_prompt`), else `False`.

    ```python
    encoder = PromptEncoder.from_pipeline(pipe)
    image = pipe(**encoder.encode("a (red:1.3) car, [blurry] ...", negative_prompt="lowres"), num_inference_steps=30)
    ```
    """

    def __init__(
        self,
        tokenizers,
        text_encoders,
        convention: str = "sd1",
        clip_skip: int | None = None,
        restore_mean: bool = True,
        zero_empty_negative: bool | None = None,
    ):
        tokenizers = list(tokenizers) if isinstance(tokenizers, (list, tuple)) else [tokenizers]
        text_encoders = list(text_encoders) if isinstance(text_encoders, (list, tuple)) else [text_encoders]
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(map(repr, CONVENTIONS))}, got {convention!r}")
        if len(tokenizers) != len(text_encoders) or not text_encoders:
            raise ValueError(
                f"give one tokenizer per text encoder: got {len(tokenizers)} tokenizers, {len(text_encoders)} encoders"
            )
        expected = (1, 2) if convention == "sdxl" else (1,)
        if len(text_encoders) not in expected:
            raise ValueError(f"convention {convention!r} takes {' or '.join(map(str, expected))} text encoder(s), "
                             f"got {len(text_encoders)}")
        if clip_skip is not None and (not isinstance(clip_skip, int) or isinstance(clip_skip, bool) or clip_skip < 0):
            raise ValueError(f"clip_skip must be None or a non-negative integer, got {clip_skip!r}")
        self.tokenizers = tokenizers
        self.text_encoders = text_encoders
        self.convention = convention
        self.clip_skip = clip_skip
        self.restore_mean = restore_mean
        self.zero_empty_negative = convention == "sdxl" if zero_empty_negative is None else zero_empty_negative

    @classmethod
    def from_pipeline(cls, pipeline, convention: str | None = None, **kwargs) -> PromptEncoder:
        """Takes the tokenizers and text encoders of a Stable Diffusion 1/2 or SDXL diffusers pipeline.

        The convention is `"sdxl"` when the pipeline has a CLIP `text_encoder_2` (one with `text_projection`), else
        `"sd1"`; SDXL pipelines pass their `force_zeros_for_empty_prompt` as `zero_empty_negative`. Other pipelines
        (Flux, SD3: a T5 encoder) are refused.
        """
        second = getattr(pipeline, "text_encoder_2", None)
        if (second is not None and not hasattr(second, "text_projection")) or hasattr(pipeline, "text_encoder_3"):
            raise ValueError(
                f"{type(pipeline).__name__} is not a Stable Diffusion 1/2 or SDXL pipeline; build PromptEncoder from "
                "its CLIP tokenizers and text encoders directly"
            )
        pairs = [
            (getattr(pipeline, tok, None), getattr(pipeline, enc, None))
            for tok, enc in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
        ]
        pairs = [(tok, enc) for tok, enc in pairs if tok is not None and enc is not None]
        if convention is None:
            convention = "sdxl" if second is not None else "sd1"
        if convention == "sdxl" and "zero_empty_negative" not in kwargs:
            kwargs["zero_empty_negative"] = bool(getattr(pipeline.config, "force_zeros_for_empty_prompt", True))
        return cls([t for t, _ in pairs], [e for _, e in pairs], convention=convention, **kwargs)

    @torch.no_grad()
    def encode(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None) -> dict:
        """Embeddings of `prompt` and `negative_prompt`, keyed by the pipeline argument they go to.

        Returns `prompt_embeds` and `negative_prompt_embeds` (`(batch, chunks * 77, channels)`, equal lengths),
        plus `pooled_prompt_embeds` and `negative_pooled_prompt_embeds` (`(batch, projection_dim)`) for `"sdxl"`.
        A string `negative_prompt` applies to every prompt of a list.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt must be a string or a non-empty list of strings")
        zero_negative = negative_prompt is None and self.zero_empty_negative
        if negative_prompt is None or isinstance(negative_prompt, str):
            negatives = [negative_prompt or ""] * len(prompts)
        else:
            negatives = list(negative_prompt)
            if len(negatives) != len(prompts):
                raise ValueError(f"got {len(prompts)} prompts but {len(negatives)} negative prompts")

        texts = prompts if zero_negative else prompts + negatives
        tokenized = [[tokenize_weighted_prompt(text, tok, chunk_length(tok, enc)) for text in texts]
                     for tok, enc in zip(self.tokenizers, self.text_encoders)]
        chunks = max(ids.shape[0] for per_encoder in tokenized for ids, _ in per_encoder)

        states, pooled = [], None
        for index, (tokenizer, encoder, per_text) in enumerate(zip(self.tokenizers, self.text_encoders, tokenized)):
            ids = torch.stack([_pad_chunks(i, chunks, tokenizer) for i, _ in per_text])
            weights = torch.stack([_pad_chunks(w, chunks) for _, w in per_text])
            hidden, pooled_rows = self._encode_chunks(encoder, ids.flatten(0, 1), tokenizer)
            hidden = apply_weights(hidden, weights.flatten(0, 1), self.restore_mean)
            states.append(hidden.unflatten(0, (len(texts), chunks)).flatten(1, 2))
            if index == len(self.text_encoders) - 1 and pooled_rows is not None:
                pooled = pooled_rows.unflatten(0, (len(texts), chunks))[:, 0]
        embeds = torch.cat(states, dim=-1)

        batch = len(prompts)
        result = {"prompt_embeds": embeds[:batch]}
        result["negative_prompt_embeds"] = torch.zeros_like(embeds) if zero_negative else embeds[batch:]
        if self.convention == "sdxl":
            if pooled is None:
                raise ValueError(
                    "the last SDXL text encoder returned no text_embeds: use a *TextModelWithProjection "
                    "(e.g. DualClipTextModelWithProjection) as text_encoder_2"
                )
            result["pooled_prompt_embeds"] = pooled[:batch]
            result["negative_pooled_prompt_embeds"] = torch.zeros_like(pooled) if zero_negative else pooled[batch:]
        return result

    def _encode_chunks(self, encoder, input_ids: torch.Tensor, tokenizer):
        """Token-level states of the convention's layer, and the projected pooled output when there is one."""
        device = encoder.device
        attention_mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            # Real tokens run up to the first EOS; the pad id may itself be EOS (SD-1), so it cannot mark padding.
            first_eos = (input_ids == tokenizer.eos_token_id).int().argmax(dim=-1, keepdim=True)
            attention_mask = (torch.arange(input_ids.shape[1]) <= first_eos).long().to(device)
        skip = self.clip_skip or 0
        outputs = encoder(input_ids.to(device), attention_mask=attention_mask, output_hidden_states=True,
                          return_dict=True)
        if self.convention == "sdxl":
            hidden = outputs.hidden_states[-(skip + 2)]
        elif skip:
            hidden = final_layer_norm(encoder)(outputs.hidden_states[-(skip + 1)])
        else:
            hidden = outputs.last_hidden_state
        return hidden, getattr(outputs, "text_embeds", None)


def _pad_chunks(rows: torch.Tensor, chunks: int, tokenizer=None) -> torch.Tensor:
    """Appends empty chunks (`[BOS] [EOS] [pad...]` ids, or weights 1) until `rows` has `chunks` rows."""
    missing = chunks - rows.shape[0]
    if missing == 0:
        return rows
    if tokenizer is None:
        filler = torch.ones(missing, rows.shape[1], dtype=rows.dtype)
    else:
        filler, _ = tokenize_weighted_prompt("", tokenizer, rows.shape[1] - 2)
        filler = filler.expand(missing, -1)
    return torch.cat([rows, filler])


__all__ = [
    "BREAK",
    "PromptEncoder",
    "apply_weights",
    "chunk_length",
    "final_layer_norm",
    "parse_prompt_weights",
    "tokenize_weighted_prompt",
]

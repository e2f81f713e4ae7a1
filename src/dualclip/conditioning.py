r"""Prompt encoding for diffusion pipelines, the way AUTOMATIC1111, ComfyUI or compel encode a prompt.

[`PromptEncoder.encode`] returns the arguments a diffusers Stable Diffusion 1/2 or SDXL pipeline takes
(`prompt_embeds=`, `negative_prompt_embeds=`, and for SDXL `pooled_prompt_embeds=`,
`negative_pooled_prompt_embeds=`). It works with dualclip text encoders and with the stock transformers ones.

A prompt only reproduces when it is encoded by the rules of the tool it was tuned in, so the syntax is a choice:

| `syntax=` | weights | long prompts | rules in |
|---|---|---|---|
| `"a1111"` (default) | `(x)` x1.1, `[x]` /1.1, `(x:w)`; chunk scaled by `w`, mean restored | 75-token chunks, comma backtracking, `BREAK` | `conditioning_a1111` |
| `"comfyui"` | `(x)` x1.1, `(x:w)` sets `w`; moves a token toward the empty prompt's | 75-token chunks, short segments kept whole | `conditioning_comfyui` |
| `"compel"` | `x++`, `(x)1.3`, `.blend()`, `.and()`; compel's up/down weighting | compel's splitting | `conditioning_compel` |
| `"balanced"` | A1111's brackets, unpaired ones literal | 75-token chunks, no backtracking | `conditioning_balanced` |

The layer each encoder contributes (`convention=`, matching diffusers' pipelines) and clip skip:

| convention | encoders | token-level states | pooled |
|---|---|---|---|
| `"sd1"`, `"sd2"` | one | last layer after the final LayerNorm; `clip_skip=k`: layer `-(k+1)` through the final LayerNorm | none |
| `"sdxl"` | two (or one: the refiner's) | layer `-(2+k)` of each, without final LayerNorm, concatenated | `text_embeds` of the last encoder, first chunk |

`clip_skip` counts as diffusers does (`clip_skip=1` is A1111's "Clip skip: 2"). `a1111_clip_skip=` takes A1111's
own setting and its rules instead: on SD-1 "Clip skip: N" takes layer `-N` through the final LayerNorm; A1111 ignores
it on SD-2 and, unless its "Clip skip SDXL" option is on (`a1111_sdxl_clip_l_skip=True`: CLIP-L then takes layer
`-N` without final LayerNorm), on SDXL.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from .conditioning_a1111 import (
    DEFAULT_COMMA_BACKTRACK,
    EMPHASES,
    chunk_a1111,
    emphasize,
    parse_a1111,
    prepare_prompt,
    tokenize_a1111,
)
from .conditioning_balanced import BREAK, parse_prompt_weights
from .conditioning_comfyui import empty_row, parse_comfyui, tokenize_comfyui, weight_toward_empty
from .conditioning_compel import CompelEncoder, parse_compel

CONVENTIONS = ("sd1", "sd2", "sdxl")
SYNTAXES = ("a1111", "comfyui", "compel", "balanced")


def chunk_length(tokenizer, text_encoder=None) -> int:
    """Tokens of prompt text per chunk: the context length (77 for CLIP) less BOS and EOS."""
    context = tokenizer.model_max_length
    if text_encoder is not None:
        context = min(context, text_encoder.config.max_position_embeddings)
    return context - 2


def tokenize_prompt(
    prompt: str,
    tokenizer,
    syntax: str = "a1111",
    length: int | None = None,
    comma_backtrack: int = DEFAULT_COMMA_BACKTRACK,
    emphasis: str = "Original",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and per-token weights of `prompt` as `syntax` chunks it: two `(chunks, length + 2)` tensors.

    `length` defaults to `chunk_length(tokenizer)` (75). `comma_backtrack` and `emphasis` apply to `"a1111"`
    (`"balanced"` never backtracks). compel splits prompts differently: see `conditioning_compel`.
    """
    length = chunk_length(tokenizer) if length is None else length
    if syntax == "a1111":
        return tokenize_a1111(prompt, tokenizer, length, comma_backtrack, emphasis)
    if syntax == "balanced":
        return chunk_a1111(parse_prompt_weights(prompt), tokenizer, length, comma_backtrack=0)
    if syntax == "comfyui":
        return tokenize_comfyui(prompt, tokenizer, length)
    raise ValueError(f"tokenize_prompt takes a chunking syntax ('a1111', 'comfyui', 'balanced'), got {syntax!r}")


def final_layer_norm(text_encoder) -> torch.nn.Module:
    """The final LayerNorm of a CLIP text encoder: dualclip's and transformers 4's `text_model.final_layer_norm`,
    or transformers 5's flat `CLIPTextModel.final_layer_norm`."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


class TextEncoderRunner:
    """One tokenizer and text encoder, and the layer read from it: `(hidden_states index, final LayerNorm)`, or
    `(None, _)` for `last_hidden_state`."""

    def __init__(self, tokenizer, text_encoder, layer: tuple[int | None, bool]):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.layer = layer
        self.chunk_length = chunk_length(tokenizer, text_encoder)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Hidden states `(rows, positions, channels)` of the layer, and `text_embeds` when the model has them."""
        encoder = self.text_encoder
        device = encoder.device
        if attention_mask is None and getattr(encoder.config, "use_attention_mask", False):
            # Real tokens run up to the first EOS; the pad id may itself be EOS (SD-1), so it cannot mark padding.
            first_eos = (input_ids == self.tokenizer.eos_token_id).int().argmax(dim=-1, keepdim=True)
            attention_mask = (torch.arange(input_ids.shape[1]) <= first_eos).long()
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        outputs = encoder(input_ids.to(device), attention_mask=attention_mask, output_hidden_states=True,
                          return_dict=True)
        index, norm = self.layer
        if index is None:
            hidden = outputs.last_hidden_state
        else:
            hidden = outputs.hidden_states[index]
            if norm:
                hidden = final_layer_norm(encoder)(hidden)
        return hidden, getattr(outputs, "text_embeds", None)


def encoder_layers(convention: str, count: int, clip_skip: int | None, a1111_clip_skip: int | None,
                   a1111_sdxl_clip_l_skip: bool) -> list[tuple[int | None, bool]]:
    """The `(hidden_states index, final LayerNorm)` each encoder contributes (see the module docstring)."""
    if convention == "sdxl":
        if a1111_clip_skip is not None:
            layers = [(-2, False)] * count
            if a1111_sdxl_clip_l_skip and count == 2:  # CLIP-L only; the refiner has no CLIP-L
                layers[0] = (-a1111_clip_skip, False)
            return layers
        return [(-(2 + (clip_skip or 0)), False)] * count
    if a1111_clip_skip is not None:
        if convention == "sd2" and a1111_clip_skip > 1:
            warnings.warn("A1111 ignores 'Clip skip' on SD-2 models; so does a1111_clip_skip", stacklevel=3)
        skip = a1111_clip_skip if convention == "sd1" else 1
        return [(None, True) if skip == 1 else (-skip, True)]
    return [(None, True) if not clip_skip else (-(clip_skip + 1), True)]


def _check_skip(name: str, value, minimum: int):
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ValueError(f"{name} must be None or an integer >= {minimum}, got {value!r}")


class PromptEncoder:
    """Encodes prompts into the embeddings a diffusers pipeline takes, by the rules of `syntax`.

    Args:
        tokenizers: one tokenizer, or a list with one per text encoder (SDXL: `[tokenizer, tokenizer_2]`).
        text_encoders: one text encoder, or a list (SDXL: `[text_encoder, text_encoder_2]`; the last one must
            output `text_embeds`, i.e. be a `*TextModelWithProjection`). dualclip or stock transformers models.
        convention: `"sd1"`, `"sd2"` or `"sdxl"` (see the module docstring).
        syntax: `"a1111"` (default), `"comfyui"`, `"compel"` or `"balanced"`; see the module docstring.
        clip_skip: layers to skip from the end, numbered as diffusers' `clip_skip` (`None` or 0: none). Applies to
            the negative prompt too (diffusers' own `encode_prompt` skips layers for the prompt only).
        a1111_clip_skip: A1111's "Clip skip" setting (1: none) with A1111's rules; exclusive with `clip_skip`.
        a1111_sdxl_clip_l_skip: A1111's "Clip skip SDXL" option (off by default there too).
        emphasis: A1111's emphasis mode, `"Original"` (default), `"No norm"`, `"Ignore"` or `"None"` (`"a1111"`,
            `"balanced"`).
        comma_backtrack: A1111's "Prompt word wrap length limit" (default 20; 0 disables).
        zero_empty_negative: give zeros as the negative embeddings of an empty negative prompt. Default: on for
            SDXL (A1111 zeros `""` and `None`; diffusers' `force_zeros_for_empty_prompt` zeros `None` only, which
            `"compel"` and `"balanced"` follow) except with `"comfyui"`, which encodes `""` (its
            `ConditioningZeroOut` node is `zero_empty_negative=True`); off otherwise.

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
        syntax: str = "a1111",
        clip_skip: int | None = None,
        a1111_clip_skip: int | None = None,
        a1111_sdxl_clip_l_skip: bool = False,
        emphasis: str = "Original",
        comma_backtrack: int = DEFAULT_COMMA_BACKTRACK,
        zero_empty_negative: bool | None = None,
    ):
        tokenizers = list(tokenizers) if isinstance(tokenizers, (list, tuple)) else [tokenizers]
        text_encoders = list(text_encoders) if isinstance(text_encoders, (list, tuple)) else [text_encoders]
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(map(repr, CONVENTIONS))}, got {convention!r}")
        if syntax not in SYNTAXES:
            raise ValueError(f"syntax must be one of {', '.join(map(repr, SYNTAXES))}, got {syntax!r}")
        if len(tokenizers) != len(text_encoders) or not text_encoders:
            raise ValueError(
                f"give one tokenizer per text encoder: got {len(tokenizers)} tokenizers, {len(text_encoders)} encoders"
            )
        expected = (1, 2) if convention == "sdxl" else (1,)
        if len(text_encoders) not in expected:
            raise ValueError(f"convention {convention!r} takes {' or '.join(map(str, expected))} text encoder(s), "
                             f"got {len(text_encoders)}")
        _check_skip("clip_skip", clip_skip, 0)
        _check_skip("a1111_clip_skip", a1111_clip_skip, 1)
        if clip_skip and a1111_clip_skip is not None:
            raise ValueError("give clip_skip (diffusers' numbering) or a1111_clip_skip (A1111's), not both")
        if emphasis not in EMPHASES:
            raise ValueError(f"emphasis must be one of {', '.join(map(repr, EMPHASES))}, got {emphasis!r}")
        if not isinstance(comma_backtrack, int) or comma_backtrack < 0:
            raise ValueError(f"comma_backtrack must be an integer >= 0, got {comma_backtrack!r}")
        layers = encoder_layers(convention, len(text_encoders), clip_skip, a1111_clip_skip, a1111_sdxl_clip_l_skip)
        self.runners = [TextEncoderRunner(t, e, layer) for t, e, layer in zip(tokenizers, text_encoders, layers)]
        self.convention = convention
        self.syntax = syntax
        self.emphasis = emphasis
        self.comma_backtrack = comma_backtrack
        if zero_empty_negative is None:
            zero_empty_negative = convention == "sdxl" and syntax != "comfyui"
        self.zero_empty_negative = zero_empty_negative

    @property
    def tokenizers(self):
        return [runner.tokenizer for runner in self.runners]

    @property
    def text_encoders(self):
        return [runner.text_encoder for runner in self.runners]

    @classmethod
    def from_pipeline(cls, pipeline, convention: str | None = None, **kwargs) -> PromptEncoder:
        """Takes the tokenizers and text encoders of a Stable Diffusion 1/2 or SDXL diffusers pipeline.

        The convention is `"sdxl"` when the pipeline has a CLIP `text_encoder_2` (one with `text_projection`), else
        `"sd1"`. With `"compel"` and `"balanced"`, which leave a missing negative prompt to the pipeline's rule, an
        SDXL pipeline's `force_zeros_for_empty_prompt` becomes `zero_empty_negative`. Other pipelines (Flux, SD3: a T5 encoder) are refused.
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
        syntax = kwargs.get("syntax", "a1111")
        if convention == "sdxl" and syntax in ("compel", "balanced") and "zero_empty_negative" not in kwargs:
            kwargs["zero_empty_negative"] = bool(getattr(pipeline.config, "force_zeros_for_empty_prompt", True))
        return cls([t for t, _ in pairs], [e for _, e in pairs], convention=convention, **kwargs)

    @torch.no_grad()
    def encode(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None) -> dict:
        """Embeddings of `prompt` and `negative_prompt`, keyed by the pipeline argument they go to.

        Returns `prompt_embeds` and `negative_prompt_embeds` (`(batch, positions, channels)`, equal lengths), plus
        `pooled_prompt_embeds` and `negative_pooled_prompt_embeds` (`(batch, projection_dim)`) for `"sdxl"`.
        A string `negative_prompt` applies to every prompt of a list.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt must be a string or a non-empty list of strings")
        if negative_prompt is None or isinstance(negative_prompt, str):
            negatives = [negative_prompt] * len(prompts)
        else:
            negatives = list(negative_prompt)
            if len(negatives) != len(prompts):
                raise ValueError(f"got {len(prompts)} prompts but {len(negatives)} negative prompts")

        if self.syntax == "a1111":
            result = self._encode_a1111(prompts, negatives)
        elif self.syntax == "compel":
            result = self._encode_compel(prompts, negatives)
        elif self.syntax == "comfyui":
            result = self._encode_comfyui(prompts, negatives)
        else:
            result = self._encode_balanced(prompts, negatives)
        if self.convention == "sdxl" and result.get("pooled_prompt_embeds") is None:
            raise ValueError(
                "the last SDXL text encoder returned no text_embeds: use a *TextModelWithProjection "
                "(e.g. DualClipTextModelWithProjection) as text_encoder_2"
            )
        if self.convention != "sdxl":
            result.pop("pooled_prompt_embeds", None)
            result.pop("negative_pooled_prompt_embeds", None)
        return result

    # ---- chunk-based syntaxes -----------------------------------------------------------------------------------

    def _chunk_rows(self, text: str, runner: TextEncoderRunner):
        if self.syntax == "a1111":
            return tokenize_a1111(text, runner.tokenizer, runner.chunk_length, self.comma_backtrack, self.emphasis)
        return chunk_a1111(parse_prompt_weights(text), runner.tokenizer, runner.chunk_length, comma_backtrack=0)

    def _encode_chunked(self, text: str):
        """One text through every encoder: emphasised states `(positions, channels)` concatenated over encoders,
        and the last encoder's pooled embedding of the first chunk."""
        states, pooled = [], None
        rows = [self._chunk_rows(text, runner) for runner in self.runners]
        chunks = max(ids.shape[0] for ids, _ in rows)
        for runner, (ids, weights) in zip(self.runners, rows):
            if ids.shape[0] < chunks:  # tokenizers that split the text differently: pad with empty chunks
                empty_ids, empty_weights = self._chunk_rows("", runner)
                missing = chunks - ids.shape[0]
                ids = torch.cat([ids, empty_ids.expand(missing, -1)])
                weights = torch.cat([weights, empty_weights.expand(missing, -1)])
            hidden, pooled_rows = runner(ids)
            states.append(emphasize(hidden, weights, self.emphasis).flatten(0, 1))
            pooled = None if pooled_rows is None else pooled_rows[0]
        return torch.cat(states, dim=-1), pooled

    def _encode_a1111(self, prompts: list[str], negatives: list[str | None]) -> dict:
        """A1111: each prompt encoded alone; prompts of a batch padded to the longest by repeating their last
        position (as A1111 stacks a batch); an empty SDXL negative is zeros; then the shorter of prompt and negative
        is padded with the empty prompt's embedding (A1111's "Pad prompt/negative prompt", which diffusers needs)."""
        encoded = [self._encode_chunked(prepare_prompt(text)) for text in prompts]
        zero = self.convention == "sdxl" and self.zero_empty_negative and all(not n for n in negatives)
        if zero:
            width = encoded[0][0].shape[-1]
            negative_encoded = [(torch.zeros(self.runners[0].chunk_length + 2, width, dtype=encoded[0][0].dtype,
                                             device=encoded[0][0].device),
                                 None if encoded[0][1] is None else torch.zeros_like(encoded[0][1]))] * len(prompts)
        else:
            negative_encoded = [self._encode_chunked(prepare_prompt(text or "", negative=True)) for text in negatives]
        embeds = _stack_repeating_last([e for e, _ in encoded])
        negative_embeds = _stack_repeating_last([e for e, _ in negative_encoded])
        if embeds.shape[1] != negative_embeds.shape[1]:
            empty, _ = self._encode_chunked("")
            embeds, negative_embeds = (_pad_with(x, empty, max(embeds.shape[1], negative_embeds.shape[1]))
                                       for x in (embeds, negative_embeds))
        return {
            "prompt_embeds": embeds,
            "negative_prompt_embeds": negative_embeds,
            "pooled_prompt_embeds": _stack_pooled([p for _, p in encoded]),
            "negative_pooled_prompt_embeds": _stack_pooled([p for _, p in negative_encoded]),
        }

    def _encode_balanced(self, prompts: list[str], negatives: list[str | None]) -> dict:
        """dualclip's earlier rules: every text padded with empty chunks to the longest; a `None` negative is zeros
        when `zero_empty_negative` (diffusers' `force_zeros_for_empty_prompt`)."""
        zero = negatives[0] is None and self.zero_empty_negative
        texts = prompts if zero else prompts + [n or "" for n in negatives]
        encoded = [self._encode_chunked(text) for text in texts]
        length = max(e.shape[0] for e, _ in encoded)
        empty, _ = self._encode_chunked("") if any(e.shape[0] < length for e, _ in encoded) else (None, None)
        embeds = torch.stack([_pad_with(e[None], empty, length)[0] for e, _ in encoded])
        pooled = _stack_pooled([p for _, p in encoded])
        return _split_prompts_and_negatives(embeds, pooled, len(prompts), zero)


    # ---- ComfyUI --------------------------------------------------------------------------------------------------

    def _encode_comfyui_text(self, text: str):
        """ComfyUI's CLIPTextEncode: per encoder, the chunks (with the empty prompt when anything is weighted) in
        one batch, weights moving tokens toward the empty prompt; encoders cut to the shorter and concatenated;
        the last encoder's pooled embedding of the first chunk."""
        states, pooled = [], None
        for runner in self.runners:
            ids, weights = tokenize_comfyui(text, runner.tokenizer, runner.chunk_length)
            weighted = bool((weights != 1).any())
            rows = torch.cat([ids, empty_row(runner.tokenizer, runner.chunk_length)]) if weighted else ids
            hidden, pooled_rows = runner(rows)
            hidden = hidden.float()
            z = hidden[: ids.shape[0]]
            if weighted:
                z = weight_toward_empty(z, weights, hidden[-1])
            states.append(z.flatten(0, 1))
            pooled = None if pooled_rows is None else pooled_rows[0]
        length = min(state.shape[0] for state in states)
        return torch.cat([state[:length] for state in states], dim=-1), pooled

    def _encode_comfyui(self, prompts: list[str], negatives: list[str | None]) -> dict:
        """Every text encoded alone, then all repeated whole to a common length (the least common multiple of their
        lengths), which is how ComfyUI batches conditionings of different lengths and which leaves cross-attention
        unchanged. An empty negative prompt is encoded, or zeros with `zero_empty_negative`."""
        zero = self.zero_empty_negative and all(not n for n in negatives)
        encoded = [self._encode_comfyui_text(text) for text in prompts]
        if zero:
            negative_encoded = [(torch.zeros_like(encoded[0][0][: self.runners[0].chunk_length + 2]),
                                 None if encoded[0][1] is None else torch.zeros_like(encoded[0][1]))] * len(prompts)
        else:
            negative_encoded = [self._encode_comfyui_text(text or "") for text in negatives]
        everything = [e for e, _ in encoded + negative_encoded]
        length = math.lcm(*(e.shape[0] for e in everything))
        tiled = torch.stack([e.repeat(length // e.shape[0], 1) for e in everything])
        dtype = self.runners[0].text_encoder.dtype
        batch = len(prompts)
        return {
            "prompt_embeds": tiled[:batch].to(dtype),
            "negative_prompt_embeds": tiled[batch:].to(dtype),
            "pooled_prompt_embeds": _stack_pooled([p for _, p in encoded]),
            "negative_pooled_prompt_embeds": _stack_pooled([p for _, p in negative_encoded]),
        }

    # ---- compel ---------------------------------------------------------------------------------------------------

    def _encode_compel(self, prompts: list[str], negatives: list[str | None]) -> dict:
        """compel's `CompelForSD` / `CompelForSDXL`: prompts and negatives encoded per text encoder and padded
        together with that encoder's empty embedding; encoders padded to each other with their encoding of "";
        pooled from the raw text. A missing negative prompt is zeros when `zero_empty_negative` (what the
        pipeline does when compel returns none), else the encoding of ""."""
        zero = negatives[0] is None and self.zero_empty_negative
        texts = prompts if zero else prompts + [n or "" for n in negatives]
        parsed = [parse_compel(text) for text in texts]
        encoders = [CompelEncoder(runner) for runner in self.runners]
        states = [torch.stack(encoder.pad_to([encoder.encode(parts) for parts in parsed])) for encoder in encoders]
        length = max(s.shape[1] for s in states)
        for index, encoder in enumerate(encoders):
            if states[index].shape[1] < length:
                filler = encoder.fragments([("", 1.0)])
                states[index] = _pad_with(states[index], filler, length)
        dtype = self.runners[0].text_encoder.dtype
        embeds = torch.cat(states, dim=-1).to(dtype)
        pooled = [encoders[-1].pooled(text) for text in texts]
        pooled = None if pooled[0] is None else torch.cat(pooled)
        return _split_prompts_and_negatives(embeds, pooled, len(prompts), zero)


def _split_prompts_and_negatives(embeds, pooled, batch: int, zero: bool) -> dict:
    """The pipeline's four inputs from a batch of prompts followed by their negatives (or, with `zero`, of prompts
    alone: the negatives are zeros)."""
    return {
        "prompt_embeds": embeds[:batch],
        "negative_prompt_embeds": torch.zeros_like(embeds) if zero else embeds[batch:],
        "pooled_prompt_embeds": None if pooled is None else pooled[:batch],
        "negative_pooled_prompt_embeds": None if pooled is None else (
            torch.zeros_like(pooled) if zero else pooled[batch:]),
    }


def _stack_repeating_last(embeds: list[torch.Tensor]) -> torch.Tensor:
    """`(positions, channels)` tensors stacked into a batch, shorter ones extended by repeating their last position."""
    length = max(e.shape[0] for e in embeds)
    return torch.stack([torch.cat([e, e[-1:].expand(length - e.shape[0], -1)]) for e in embeds])


def _pad_with(embeds: torch.Tensor, filler: torch.Tensor | None, length: int) -> torch.Tensor:
    """`(batch, positions, channels)` extended to `length` positions by whole copies of `filler`."""
    missing = length - embeds.shape[1]
    if missing <= 0:
        return embeds
    repeats = math.ceil(missing / filler.shape[0])
    extra = filler.repeat(repeats, 1)[:missing]
    return torch.cat([embeds, extra[None].expand(embeds.shape[0], -1, -1).to(embeds.dtype)], dim=1)


def _stack_pooled(pooled: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(p is None for p in pooled) else torch.stack(pooled)


__all__ = [
    "BREAK",
    "CONVENTIONS",
    "SYNTAXES",
    "PromptEncoder",
    "TextEncoderRunner",
    "chunk_length",
    "emphasize",
    "encoder_layers",
    "final_layer_norm",
    "parse_a1111",
    "parse_comfyui",
    "parse_compel",
    "parse_prompt_weights",
    "tokenize_prompt",
]

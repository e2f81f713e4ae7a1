"""Token-level helpers shared by the prompt syntaxes: tokenizing weighted fragments, textual-inversion tokens with
several vectors, and building the `[BOS] tokens [EOS] [pad...]` rows a CLIP text encoder reads."""

from __future__ import annotations

from collections.abc import Sequence

import torch

COMMA = ",</w>"
"""The BPE token of a comma that ends a word: the one A1111 backtracks to when a chunk fills up."""


def fragment_token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text on its own, without BOS/EOS and without truncation."""
    texts = list(texts)
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]


def multi_vector_expansions(tokenizer) -> dict[int, list[int]]:
    """Maps the id of each multi-vector textual-inversion token `<t>` to the ids of `<t> <t>_1 <t>_2 ...`, the way
    diffusers' `load_textual_inversion` adds them and its `maybe_convert_prompt` expands them."""
    added = tokenizer.added_tokens_encoder
    expansions = {}
    for token, token_id in added.items():
        vector_ids = [token_id]
        while f"{token}_{len(vector_ids)}" in added:
            vector_ids.append(added[f"{token}_{len(vector_ids)}"])
        if len(vector_ids) > 1:
            expansions[token_id] = vector_ids
    return expansions


def comma_token_id(tokenizer) -> int | None:
    """Id of `,</w>` in the tokenizer's vocabulary, or `None` when it has none."""
    token_id = tokenizer.convert_tokens_to_ids(COMMA)
    return None if token_id is None or token_id == tokenizer.unk_token_id else int(token_id)


def pad_id(tokenizer) -> int:
    """The id that fills a row after its EOS: the tokenizer's pad token (EOS for SD-1, `!` for SD-2/SDXL's second)."""
    return tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id


def rows_to_tensors(rows: Sequence[tuple[Sequence[int], Sequence[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks `(ids, weights)` rows of equal length into a long and a float32 tensor."""
    ids = torch.tensor([list(r[0]) for r in rows], dtype=torch.long)
    weights = torch.tensor([list(r[1]) for r in rows], dtype=torch.float32)
    return ids, weights


__all__ = ["COMMA", "comma_token_id", "fragment_token_ids", "multi_vector_expansions", "pad_id", "rows_to_tensors"]

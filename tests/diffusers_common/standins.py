"""Local stand-ins for the hub repositories diffusers' fast pipeline tests read, written as an offline HF cache.

The tests call `CLIPTokenizer.from_pretrained("hf-internal-testing/tiny-random-clip")`, and Flux's
`AutoConfig.from_pretrained("hf-internal-testing/tiny-random-t5")` / `AutoTokenizer.from_pretrained(...)` (same id).
Nothing here can reach the hub, so we write small equivalents into `<HF_HOME>/hub/models--<org>--<name>/snapshots/`
with `refs/main` pointing at them: with `HF_HUB_OFFLINE=1` every `from_pretrained` path (transformers, dualclip,
Auto classes) resolves these ids from the cache, no monkeypatching. Both runs (stock and dualclip) use the same ones.

- tiny-random-clip: transformers' `CLIPTokenizer` (OpenAI byte-level BPE) cut to 1,000 ids — the 512 byte tokens,
  OpenAI's first 486 merges, `<|startoftext|>` = 998, `<|endoftext|>` = 999 (also the pad token, as in SD 1.x) —
  so every id fits the tests' text configs (`vocab_size=1000`); 77 positions.
- tiny-random-t5: a `T5Config` with the tiny-random-t5 values (d_model 32, 5 layers, 4 heads, d_kv 8, d_ff 37,
  vocabulary 1103) and a `T5Tokenizer` (Unigram) over 1,000 pieces (specials, characters, "▁"-prefixed characters
  and short words) + T5's 100 `<extra_id_N>` tokens.
"""

import json
import os
import string
from pathlib import Path

SNAPSHOT = "0" * 40
CLIP_REPO = "hf-internal-testing/tiny-random-clip"
T5_REPO = "hf-internal-testing/tiny-random-t5"
CLIP_VOCAB = 1000
T5_PIECES = 1000
_COMPLETE = ".standins-complete-v1"


def _snapshot(hf_home: Path, repo: str) -> Path:
    root = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(SNAPSHOT)
    folder = root / "snapshots" / SNAPSHOT
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _clip_tokenizer(folder: Path) -> None:
    from transformers import CLIPTokenizer

    from dualclip.tokenization_dualclip import load_openai_bpe

    vocab, merges = load_openai_bpe()
    kept_merges = merges[: CLIP_VOCAB - 2 - 512]
    small = {token: index for token, index in vocab.items() if index < CLIP_VOCAB - 2}
    small["<|startoftext|>"] = CLIP_VOCAB - 2
    small["<|endoftext|>"] = CLIP_VOCAB - 1
    # every merge result is in the vocabulary: OpenAI's ids 512.. are its merges, in order
    assert all("".join(pair) in small for pair in kept_merges)
    staging = folder / "raw"
    staging.mkdir(exist_ok=True)
    (staging / "vocab.json").write_text(json.dumps(small))
    (staging / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in kept_merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=str(staging / "vocab.json"), merges=str(staging / "merges.txt"),
                              pad_token="<|endoftext|>", model_max_length=77)
    tokenizer.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):  # the slow files too, for code that reads them directly
        if not (folder / name).exists():
            (folder / name).write_text((staging / name).read_text())
    (staging / "vocab.json").unlink()
    (staging / "merges.txt").unlink()
    staging.rmdir()


def _t5(folder: Path) -> None:
    from transformers import T5Config, T5Tokenizer

    config = T5Config(vocab_size=1103, d_model=32, d_kv=8, d_ff=37, num_layers=5, num_decoder_layers=5, num_heads=4,
                      relative_attention_num_buckets=8, dropout_rate=0.1, initializer_factor=0.002,
                      feed_forward_proj="relu", is_encoder_decoder=True, eos_token_id=1, pad_token_id=0,
                      decoder_start_token_id=0)
    config.save_pretrained(folder)
    pieces = ["<pad>", "</s>", "<unk>"]
    characters = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces += ["▁"] + ["▁" + c for c in characters] + list(characters)
    words = ("a an the of on in at to and with painting squirrel eating burger photo cat dog astronaut horse "
             "riding red blue green big small").split()
    pieces += ["▁" + w for w in words if "▁" + w not in pieces]
    letters = string.ascii_lowercase
    for first in letters:  # fill with two-letter pieces, deterministic
        for second in letters:
            if len(pieces) >= T5_PIECES:
                break
            pieces += [first + second]
    pieces = pieces[:T5_PIECES]
    vocab = [(piece, 0.0 if index < 3 else -float(index) / 100) for index, piece in enumerate(pieces)]
    T5Tokenizer(vocab=vocab, extra_ids=100, model_max_length=512).save_pretrained(folder)


def build(hf_home) -> Path:
    """Writes the stand-ins under `hf_home` (once) and returns it; point `HF_HOME` there."""
    hf_home = Path(hf_home)
    if (hf_home / _COMPLETE).exists():
        return hf_home
    _clip_tokenizer(_snapshot(hf_home, CLIP_REPO))
    _t5(_snapshot(hf_home, T5_REPO))
    (hf_home / _COMPLETE).write_text("\n".join((CLIP_REPO, T5_REPO)) + "\n")
    return hf_home


def check(hf_home) -> None:
    """Loads each stand-in the way the tests do (offline), stock and dualclip."""
    os.environ["HF_HOME"] = str(hf_home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoConfig, AutoTokenizer, CLIPTokenizer

    import dualclip

    for cls in (CLIPTokenizer, dualclip.DualClipTokenizer):
        tokenizer = cls.from_pretrained(CLIP_REPO)
        ids = tokenizer("A painting of a squirrel eating a burger", padding="max_length", max_length=77).input_ids
        assert len(ids) == 77 and max(ids) < CLIP_VOCAB, (cls, ids)
        print(cls.__name__, ids[:16])
    config = AutoConfig.from_pretrained(T5_REPO)
    t5 = AutoTokenizer.from_pretrained(T5_REPO)
    ids = t5("A painting of a squirrel eating a burger").input_ids
    assert max(ids) < config.vocab_size
    print(type(t5).__name__, len(t5), ids)


if __name__ == "__main__":
    import sys
    import tempfile

    home = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()).resolve()
    os.environ["HF_HUB_OFFLINE"] = "1"  # both before huggingface_hub reads them
    os.environ["HF_HOME"] = str(home)
    build(home)
    check(home)

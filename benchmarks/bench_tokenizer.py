"""Tokenizer speed: DualClipTokenizer vs OpenAI's SimpleTokenizer (clip.tokenize) and transformers' CLIPTokenizer.

Plain script, no network. Captions come from templates filled from a fixed word list with a fixed seed (a small
vocabulary, so the original's per-word BPE cache warms up quickly: a conservative setting for the speed-up); the
mixed corpus inserts curly quotes, accents, ligatures, full-width text, HTML entities, mojibake, emoji and CJK
into a share of them. transformers' CLIPTokenizer is built offline from vocab.json/merges.txt written from the
packaged OpenAI vocabulary. Every tokenizer's output is compared with the original before anything is timed;
timings are medians over --repeats interleaved passes in a warm process, each pass on a fresh instance (plus one
DualClipTokenizer row that keeps its cache).

    python benchmarks/bench_tokenizer.py --captions 10000 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ORIGINAL = "OpenAI SimpleTokenizer (clip.tokenize, fresh)"
TRANSFORMERS = "transformers CLIPTokenizer (fresh instance)"

ADJECTIVES = (
    "red blue green small large old young wooden shiny wet dusty bright dark tall tiny fluffy striped broken "
    "happy sleepy golden rusty modern vintage crowded empty snowy sunny rainy"
).split()
NOUNS = (
    "cat dog horse bicycle car bus train boat table chair lamp book cup bottle tree flower mountain river beach "
    "city street house bridge kitchen garden woman man child girl boy pizza sandwich guitar clock umbrella"
).split()
VERBS = "sitting standing running lying sleeping parked floating hanging walking waiting".split()
PLACES = "the table the street a field the beach a shelf the snow a kitchen the park a bench the water".split(" ")
PLACES = [" ".join(PLACES[i : i + 2]) for i in range(0, len(PLACES), 2)]
TEMPLATES = (
    "a photo of a {adj} {noun}.",
    "A {adj} {noun} {verb} on {place}",
    "two {noun}s {verb} next to {place}, with a {adj} {noun2} in the background",
    "Close-up of the {noun}'s {adj} surface; it's {verb} near {place}!",
    "{adj} {noun} & {noun2} ({adj2}), 3 of them, {verb} by {place}",
    "an image showing a {noun} that is {adj} and a {noun2} that isn't",
)
# Non-ASCII material for the mixed corpus: curly quotes, ligatures, full-width, entities, mojibake, emoji, CJK.
UNICODE_BITS = (
    "\u201cvintage\u201d", "caf\u00e9", "na\u00efve", "\ufb01sh", "\uff21\uff22\uff23", "&amp;", "&lt;3", "&#233;t\u00e9",
    "caf\u00c3\u00a9", "it\u00e2\u20ac\u2122s", "\U0001f431", "\u732b\u306e\u5199\u771f", "\u00fcber", "\u2014",
    "Stra\u00dfe", "\u0418\u0432\u0430\u043d", "e\u0301t\u00e9",
)


def make_captions(n: int, seed: int, unicode_share: float) -> list[str]:
    """`n` captions from the word lists; `unicode_share` of them get one or two non-ASCII pieces."""
    rng = random.Random(seed)
    captions = []
    for _ in range(n):
        caption = rng.choice(TEMPLATES).format(
            adj=rng.choice(ADJECTIVES), adj2=rng.choice(ADJECTIVES), noun=rng.choice(NOUNS),
            noun2=rng.choice(NOUNS), verb=rng.choice(VERBS), place=rng.choice(PLACES),
        )
        if rng.random() < unicode_share:
            words = caption.split(" ")
            for _ in range(rng.randint(1, 2)):
                words.insert(rng.randrange(len(words) + 1), rng.choice(UNICODE_BITS))
            caption = " ".join(words)
        captions.append(caption)
    return captions


def import_references():
    """clip imports torchvision at import time; use the tests' stand-in, after transformers has decided."""
    from transformers.utils.import_utils import is_torchvision_available

    is_torchvision_available()
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "_stubs"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip
        import clip.clip
        from clip.simple_tokenizer import SimpleTokenizer
    return clip, SimpleTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--captions", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unicode-share", type=float, default=0.2, help="share of captions given non-ASCII pieces in the mixed corpus")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import CLIPTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from dualclip.tokenization_dualclip import DualClipTokenizer

    clip, SimpleTokenizer = import_references()

    t0 = time.perf_counter()
    warm_ours = DualClipTokenizer()
    construct_s = time.perf_counter() - t0
    tmp = tempfile.TemporaryDirectory()
    warm_ours.save_vocabulary(tmp.name)  # vocab.json + merges.txt, as in transformers' CLIP folders

    corpora = {
        "plain ASCII": make_captions(args.captions, args.seed, 0.0),
        f"mixed Unicode ({args.unicode_share:.0%} non-ASCII)": make_captions(args.captions, args.seed + 1, args.unicode_share),
    }

    def call(tokenizer, captions):
        return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]

    # Each runner: (untimed preparation, timed call). "fresh" = a new instance, so no cache carries over.
    def original():
        clip.clip._tokenizer = SimpleTokenizer()
        return lambda captions: clip.tokenize(captions, truncate=True)

    def hf_fresh():
        tokenizer = CLIPTokenizer.from_pretrained(tmp.name, pad_token="!")
        return lambda captions: call(tokenizer, captions)

    def ours_fresh():
        tokenizer = DualClipTokenizer()
        return lambda captions: call(tokenizer, captions)

    def ours_warm():
        return lambda captions: call(warm_ours, captions)

    runners = {
        ORIGINAL: original,
        TRANSFORMERS: hf_fresh,
        "DualClipTokenizer (fresh instance)": ours_fresh,
        "DualClipTokenizer (warm cache)": ours_warm,
    }

    def timed(prepare, captions):
        run = prepare()
        gc.collect()  # as timeit does: no collection of an earlier runner's garbage inside a timed call
        gc.disable()
        try:
            start = time.perf_counter()
            out = run(captions)
            return time.perf_counter() - start, out
        finally:
            gc.enable()

    print(f"# Tokenizer benchmark\n\n{args.captions} captions per corpus, `padding='max_length', max_length=77, "
          f"truncation=True, return_tensors='pt'` (the original: `clip.tokenize(texts, truncate=True)`); median of "
          f"{args.repeats} warm-process, interleaved passes, garbage collector paused inside timed calls. Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}. "
          f"`DualClipTokenizer()` construction: {construct_s * 1000:.0f} ms.\n")
    print("| corpus | tokenizer | median s | captions/s | speed-up vs original | time vs CLIPTokenizer | rows equal to original |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for corpus_name, captions in corpora.items():
        reference = timed(original, captions)[1]
        agree = {}
        for name, prepare in runners.items():
            out = timed(prepare, captions)[1]  # also the warm-up pass
            agree[name] = int((out == reference).all(dim=1).sum())
        for name in runners:
            if name.startswith("DualClip") and agree[name] != len(captions):
                sys.exit(f"{name} disagrees with the original on {len(captions) - agree[name]} captions")
        times = {name: [] for name in runners}
        for _ in range(args.repeats):
            for name, prepare in runners.items():
                times[name].append(timed(prepare, captions)[0])
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        for name in runners:
            print(f"| {corpus_name} | {name} | {medians[name]:.3f} | {len(captions) / medians[name]:,.0f} | "
                  f"{medians[ORIGINAL] / medians[name]:.1f}x | {medians[name] / medians[TRANSFORMERS]:.2f}x | "
                  f"{agree[name]}/{len(captions)} |")
    tmp.cleanup()
    print("\nThe original and CLIPTokenizer get a fresh instance (empty caches) before every timed pass; so does the "
          "first DualClipTokenizer row. CLIPTokenizer is built with pad_token='!' to pad with id 0 like clip.tokenize; "
          "transformers then registers '!' as an added token and cuts it out of running text, and it runs neither "
          "ftfy nor HTML unescaping, hence its rows that differ from the original.")


if __name__ == "__main__":
    main()

"""dualclip against transformers CLIP and OpenCLIP on identical weights and inputs (CPU, fp32).

Each contender set is built once from one random OpenCLIP model: its state dict is converted to a dualclip folder
with `dualclip.conversion`, which is exported to a transformers CLIP folder, so all three hold the same numbers.
Outputs are checked to agree before anything is timed; timings are warm medians, interleaved.

    python benchmarks/bench_models.py --threads 2                 # every case, the RESULTS.md table
    python benchmarks/bench_models.py --cases f --rounds 3        # pooled text under torch.compile
    python benchmarks/bench_models.py --cases a --archs ViT-B-32 --rounds 3
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from timing import (
    import_references,
    interleaved_medians,
    machine_facts,
    markdown_table,
    max_abs_diff,
    milliseconds,
    ratio,
)

import dualclip
from dualclip.conversion import ConversionError, convert_openclip_checkpoint, export_to_hf_clip

OPENCLIP_NAMES = {  # OpenAI shapes with QuickGELU, as released
    "ViT-B-32": "ViT-B-32-quickgelu",
    "ViT-B-16": "ViT-B-16-quickgelu",
    "ViT-L-14": "ViT-L-14-quickgelu",
    "RN50": "RN50-quickgelu",
}
AGREEMENT = 1e-5  # on unit-norm embeddings
BOS, EOS = 49406, 49407


class Contenders:
    """One architecture's three implementations holding the same random weights."""

    def __init__(self, arch: str, workdir: Path):
        open_clip = import_references()
        torch.manual_seed(0)
        self.arch = arch
        self.openclip = open_clip.create_model(OPENCLIP_NAMES[arch]).eval()
        checkpoint = workdir / f"{arch}.pt"
        torch.save(self.openclip.state_dict(), checkpoint)
        convert_openclip_checkpoint(
            checkpoint, workdir / f"{arch}-dualclip", model_name=OPENCLIP_NAMES[arch], overwrite=True
        )
        self.ours = dualclip.DualClipModel.from_pretrained(workdir / f"{arch}-dualclip").eval()
        self.dualclip_folder = workdir / f"{arch}-dualclip"
        try:
            export_to_hf_clip(self.dualclip_folder, workdir / f"{arch}-hf", overwrite=True)
            self.hf_folder = workdir / f"{arch}-hf"
            self.transformers = transformers.CLIPModel.from_pretrained(self.hf_folder, attn_implementation="sdpa").eval()
        except ConversionError:  # ResNet towers: transformers CLIP has none
            self.hf_folder, self.transformers = None, None
        checkpoint.unlink()

    @property
    def image_size(self) -> int:
        return self.ours.config.vision_config.image_size


def caption_batch(batch: int, seed: int = 0):
    """77-padded ids of captions 8-24 tokens long (BOS, words, EOS, zeros), as processors and pipelines feed CLIP."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 25, (batch,), generator=generator)
    ids = torch.zeros(batch, 77, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths.tolist()):
        ids[row, 1 : length - 1] = torch.randint(1, BOS, (length - 2,), generator=generator)
        ids[row, 0], ids[row, length - 1] = BOS, EOS
        mask[row, :length] = 1
    return ids, mask


def checked(contenders: dict, reference_name: str = "dualclip") -> dict:
    """Runs every contender once and insists their normalised outputs agree; returns the callables."""
    outputs = {name: F.normalize(run().float(), dim=-1) for name, run in contenders.items()}
    for name, output in outputs.items():
        difference = max_abs_diff(output, outputs[reference_name])
        if difference > AGREEMENT:
            raise SystemExit(f"{name} disagrees with {reference_name}: max abs diff {difference:.2e}")
    return contenders


def text_case(models: Contenders, batch: int, rounds: int):
    ids, mask = caption_batch(batch)
    contenders = {
        "dualclip": lambda: models.ours.encode_text(ids, attention_mask=mask),
        "OpenCLIP": lambda: models.openclip.encode_text(ids),
    }
    if models.transformers is not None:
        contenders["transformers"] = lambda: models.transformers.get_text_features(ids, mask).pooler_output
    return interleaved_medians(checked(contenders), rounds)


def compiled_text_case(models: Contenders, batch: int, rounds: int):
    """(a) under `torch.compile` (inductor): each contender's text tower compiled, the same calls as (a).

    dualclip cuts the captions before its compiled tower (lengths bucketed to multiples of 8: at most 10 graphs for
    77 positions), so the compiled graph runs on the short batch."""
    torch._dynamo.reset()
    models.ours.text_model.compile()
    models.openclip.transformer.compile()
    if models.transformers is not None:
        models.transformers.text_model.compile()
    try:
        return text_case(models, batch, rounds)
    finally:  # later cases time the eager models
        for model in (models.ours.text_model, models.openclip.transformer, getattr(models.transformers, "text_model", None)):
            if model is not None:
                model._compiled_call_impl = None


def image_case(models: Contenders, batch: int, rounds: int):
    pixels = torch.randn(batch, 3, models.image_size, models.image_size, generator=torch.Generator().manual_seed(1))
    contenders = {
        "dualclip": lambda: models.ours.encode_image(pixels),
        "OpenCLIP": lambda: models.openclip.encode_image(pixels),
    }
    if models.transformers is not None:
        contenders["transformers"] = lambda: models.transformers.get_image_features(pixels).pooler_output
    return interleaved_medians(checked(contenders), rounds)


def training_case(models: Contenders, batch: int, rounds: int):
    """Forward, contrastive loss and backward (no optimizer step) on 77-padded captions."""
    open_clip = import_references()
    ids, mask = caption_batch(batch, seed=2)
    pixels = torch.randn(batch, 3, models.image_size, models.image_size, generator=torch.Generator().manual_seed(3))
    clip_loss = open_clip.ClipLoss()

    def step(model, loss_of):
        model.train()
        model.zero_grad(set_to_none=True)
        loss = loss_of(model)
        loss.backward()
        return loss.detach().reshape(1, 1)

    def openclip_loss(model):
        image_features, text_features, logit_scale = model(pixels, ids)
        return clip_loss(image_features, text_features, logit_scale)

    contenders = {
        "dualclip": lambda: step(models.ours, lambda m: m(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                                                          return_loss=True).loss),
        "OpenCLIP": lambda: step(models.openclip, openclip_loss),
    }
    if models.transformers is not None:
        contenders["transformers"] = lambda: step(
            models.transformers,
            lambda m: m(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss,
        )
    losses = {name: run() for name, run in contenders.items()}
    for name, loss in losses.items():
        if abs(loss.item() - losses["dualclip"].item()) > 1e-4:
            raise SystemExit(f"training loss of {name} ({loss.item()}) differs from dualclip's ({losses['dualclip'].item()})")
    try:
        return interleaved_medians(contenders, rounds)
    finally:
        for model in (models.ours, models.openclip, models.transformers):
            if model is not None:
                model.eval().zero_grad(set_to_none=True)


def loading_case(models: Contenders, rounds: int):
    """`from_pretrained` of a safetensors folder (dualclip folder vs the same weights as a transformers folder)."""
    contenders = {"dualclip": lambda: dualclip.DualClipModel.from_pretrained(models.dualclip_folder)}
    if models.hf_folder is not None:
        contenders["transformers"] = lambda: transformers.CLIPModel.from_pretrained(models.hf_folder)
    return interleaved_medians(contenders, rounds)


def row(case: str, arch: str, batch, medians: dict) -> list[str]:
    ours = medians["dualclip"]
    return [
        case, arch, str(batch), milliseconds(ours),
        milliseconds(medians["transformers"]) if "transformers" in medians else "n/a",
        milliseconds(medians["OpenCLIP"]) if "OpenCLIP" in medians else "n/a",
        ratio(medians.get("transformers"), ours), ratio(medians.get("OpenCLIP"), ours),
    ]


PLAN = {
    "a": [("ViT-B-32", 64), ("ViT-B-32", 256), ("ViT-L-14", 64), ("ViT-L-14", 256)],
    "b": [("ViT-B-32", 16), ("ViT-B-32", 64), ("ViT-B-16", 16), ("ViT-B-16", 64), ("ViT-L-14", 16),
          ("ViT-L-14", 64), ("RN50", 16), ("RN50", 64)],
    "c": [("ViT-B-32", 32)],
    "e": [("ViT-B-32", None), ("ViT-L-14", None)],
    "f": [("ViT-B-32", 64)],
}
CASE_NAMES = {"a": "(a) pooled text", "b": "(b) image", "c": "(c) train step", "e": "(e) from_pretrained",
              "f": "(f) pooled text, compiled"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="abcef", help="letters of the cases to run (default: abcef)")
    parser.add_argument("--archs", nargs="*", help="only these architectures (default: the plan's)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per contender (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {machine_facts()}\n")

    rows, built = [], {}
    with tempfile.TemporaryDirectory() as workdir, torch.inference_mode(False):
        for case in args.cases:
            for arch, batch in PLAN[case]:
                if args.archs and arch not in args.archs:
                    continue
                if arch not in built:
                    started = time.perf_counter()
                    built.clear()  # one architecture in memory at a time
                    built[arch] = Contenders(arch, Path(workdir))
                    print(f"built {arch} in {time.perf_counter() - started:.0f} s", flush=True)
                models = built[arch]
                # Big models get fewer rounds: ViT-L/14 at batch 256 is tens of seconds per call on 2 cores.
                rounds = max(3, args.rounds // 2) if arch == "ViT-L-14" and (batch or 0) >= 64 else args.rounds
                if case == "c":
                    medians = training_case(models, batch, rounds)
                elif case == "e":
                    medians = loading_case(models, rounds)
                else:
                    run_case = {"a": text_case, "b": image_case, "f": compiled_text_case}[case]
                    with torch.no_grad():
                        medians = run_case(models, batch, rounds)
                rows.append(row(CASE_NAMES[case], arch, batch if batch else "-", medians))
                print(markdown_table(HEADER, rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(markdown_table(HEADER, rows))


HEADER = ["case", "shape", "batch", "dualclip ms", "transformers ms", "OpenCLIP ms", "vs transformers", "vs OpenCLIP"]

if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Which of OpenCLIP's pretrained (model, tag) pairs dualclip converts, by family: a Markdown table for README.md.

The list is OpenCLIP's own (`open_clip.list_pretrained()`), never typed by hand. Each distinct model is built by
open_clip on the meta device (shapes only: no weights are downloaded or allocated, so ViT-bigG or EVA02-E cost
nothing), and its state dict goes through dualclip's OpenCLIP converter (`convert_openclip_tensors`) and into a
`DualClipModel` (`build_model`), exactly as a real checkpoint of that model would; a refusal is reported with the
converter's reason. Every tag of a model shares its architecture, so a model's answer holds for all its tags.

    python conversion/openclip_coverage.py                          # print the table
    python conversion/openclip_coverage.py --write-readme README.md # refresh README's table between the markers
    python conversion/openclip_coverage.py --json coverage.json     # per-pair results

open_clip (and timm) are the test-only reference implementations; they import behind the tests' torchvision
stand-in (tests/_stubs), as in the tests. Runs offline: open_clip models whose text tower is a Hugging Face model
need that model's config from the hub to be built; without it in the local cache they are checked on their model
config alone.
"""

import argparse
import copy
import json
import logging
import os
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUBS = ROOT / "tests" / "_stubs"
START_MARKER = "<!-- openclip-coverage:start -->"
END_MARKER = "<!-- openclip-coverage:end -->"
REGENERATE = "python conversion/openclip_coverage.py --write-readme README.md"

CONVERTS = "converts"
REFUSED = "refused"  # dualclip's converter (or the dualclip model build) refused, with a reason
NOT_BUILT = "not built"  # open_clip could not build the model here (e.g. its HF text config is not cached)
ERROR = "error"  # anything else raised while converting: a bug to look at, reported rather than hidden

# Families in table order, with the rule on the model config (and name) that puts a model in each. The first rule
# that matches wins: CoCa and HF text towers first (they override whatever image tower the model has).
FAMILIES = (
    ("CLIP ViT (OpenCLIP's own towers)", "OpenCLIP's ViT and text transformer (OpenAI, LAION, DataComp, MetaCLIP...)"),
    ("CLIP ResNet (OpenCLIP's own towers)", "`vision_cfg.layers` is a list: OpenAI's modified ResNet"),
    ("CLIPA", "`vision_cfg.final_ln_after_pool` (average pooling, no pre-norm, BERT tokenizer)"),
    ("SigLIP", "a timm `*siglip*` image tower"),
    ("SigLIP 2", "a timm `*siglip*` image tower with a SigLIP 2 (Gemma) tokenizer"),
    ("EVA", "a timm `eva*` image tower"),
    ("PE (Perception Encoder)", "a timm `vit_pe_*` image tower"),
    ("ConvNeXt", "a timm `convnext*` image tower"),
    ("MobileCLIP", "model name `MobileCLIP*` (timm FastViT/MCi or ViT image towers)"),
    ("ViTamin", "a timm `vitamin*` image tower"),
    ("Hugging Face text tower", "`text_cfg.hf_model_name` (RoBERTa, XLM-RoBERTa, NLLB)"),
    ("CoCa", "`multimodal_cfg` (a captioning decoder)"),
    ("other timm image tower", "any other `vision_cfg.timm_model_name`"),
)
FAMILY_NAMES = tuple(name for name, _ in FAMILIES)


def family_of(model_name: str, model_cfg: dict) -> str:
    """The family of an OpenCLIP model, by the rules of `FAMILIES`."""
    vision = model_cfg.get("vision_cfg") or {}
    text = model_cfg.get("text_cfg") or {}
    timm_name = (vision.get("timm_model_name") or "").lower()
    if model_cfg.get("multimodal_cfg"):
        return "CoCa"
    if text.get("hf_model_name"):
        return "Hugging Face text tower"
    if model_name.startswith("MobileCLIP"):
        return "MobileCLIP"
    if timm_name:
        if "siglip" in timm_name:
            return "SigLIP 2" if "siglip2" in (text.get("hf_tokenizer_name") or "").lower() else "SigLIP"
        for prefix, family in (("eva", "EVA"), ("vit_pe_", "PE (Perception Encoder)"), ("convnext", "ConvNeXt"),
                               ("vitamin", "ViTamin")):
            if timm_name.startswith(prefix):
                return family
        return "other timm image tower"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "CLIP ResNet (OpenCLIP's own towers)"
    if vision.get("final_ln_after_pool"):
        return "CLIPA"
    return "CLIP ViT (OpenCLIP's own towers)"


@dataclass
class ModelResult:
    model: str
    tags: list
    family: str
    status: str
    reason: str | None = None
    architecture: str | None = None
    checked_on: str = "state dict"  # or "model config" where open_clip could not build the model here


def import_open_clip():
    """open_clip with the tests' torchvision stand-in when no torchvision is installed (it imports torchvision at
    import time). transformers decides first, so it never sees the stand-in. Offline unless told otherwise."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils.import_utils import is_torchvision_available

    if not is_torchvision_available() and str(STUBS) not in sys.path:
        sys.path.insert(0, str(STUBS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import open_clip

    return open_clip


def pretrained_by_model(open_clip) -> dict[str, list[str]]:
    """open_clip's pretrained list as model -> sorted tags, models sorted."""
    tags: dict[str, list[str]] = {}
    for model, tag in open_clip.list_pretrained():
        tags.setdefault(model, []).append(tag)
    return {model: sorted(tags[model]) for model in sorted(tags, key=_sort_key)}


def _sort_key(name: str):
    return name.lower(), name


def shorten(message: str, limit: int = 200) -> str:
    """A converter message on one line, long option values and long parenthesised lists elided."""
    text = " ".join(str(message).split())
    text = re.sub(r"=(\{[^{}]{40,}\}|\[[^\[\]]{40,}\])", lambda m: "=" + m.group(1)[0] + "…" + m.group(1)[-1], text)
    text = re.sub(r"\(([^()]{60,})\)", "(…)", text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _build_meta_state_dict(open_clip, name: str) -> dict:
    import torch

    # Under the meta device every parameter is a shape without storage; `device="meta"` keeps create_model from
    # moving the result to the CPU (which would need data).
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = open_clip.create_model(name, device="meta")
    return dict(model.state_dict())


def _not_built_reason(model_cfg: dict, error: Exception) -> str:
    hf_name = (model_cfg.get("text_cfg") or {}).get("hf_model_name")
    if hf_name and isinstance(error, OSError):
        return (f"open_clip cannot build it offline: the config of its text tower `{hf_name}` comes from the "
                "Hugging Face hub and is not in the local cache")
    return f"open_clip cannot build it on the meta device: {type(error).__name__}: {shorten(error)}"


def _convert(model_cfg: dict, state: dict, hf_text_config: dict | None = None):
    """`(status, reason, architecture)` of dualclip's converter and model build on `state` (meta tensors);
    `hf_text_config`: the config of a Hugging Face text encoder, which dualclip's converter needs too."""
    import torch

    import dualclip
    from dualclip.conversion import ConversionError
    from dualclip.conversion.building import build_model
    from dualclip.conversion.converters import convert_openclip_tensors
    from dualclip.conversion.reading import TensorSource

    try:
        config, tensors, architecture, _ = convert_openclip_tensors(copy.deepcopy(model_cfg), TensorSource(state),
                                                                    torch.float32, hf_text_config=hf_text_config)
        build_model(dualclip.DualClipModel, config, tensors)
    except ConversionError as error:
        return REFUSED, shorten(error), None
    except Exception as error:  # noqa: BLE001  (a converter bug must show in the table, not stop it)
        return ERROR, f"{type(error).__name__}: {shorten(error)}", None
    return CONVERTS, None, shorten(architecture)


def check_model(open_clip, name: str, tags=()) -> ModelResult:
    """Whether dualclip converts OpenCLIP model `name` (built by open_clip on the meta device)."""
    model_cfg = open_clip.get_model_config(name)
    result = ModelResult(model=name, tags=list(tags), family=family_of(name, model_cfg or {}), status=ERROR)
    if model_cfg is None:
        result.reason = "open_clip has no model config of this name"
        return result
    try:
        state = _build_meta_state_dict(open_clip, name)
    except Exception as error:  # noqa: BLE001  (reported; the other models still get checked)
        # The model config alone may already be refused (an option dualclip cannot express needs no tensors).
        status, reason, _ = _convert(model_cfg, {})
        if status == REFUSED and "OpenCLIP option" in reason:
            result.status, result.reason, result.checked_on = REFUSED, reason, "model config"
        else:
            result.status, result.reason = NOT_BUILT, _not_built_reason(model_cfg, error)
        return result
    hf_text_config = None
    if hf_name := (model_cfg.get("text_cfg") or {}).get("hf_model_name"):
        from transformers import AutoConfig

        # open_clip has just read the encoder's config from the local cache; dualclip's converter needs it too.
        hf_text_config = AutoConfig.from_pretrained(hf_name).to_dict()
    result.status, result.reason, result.architecture = _convert(model_cfg, state, hf_text_config)
    return result


def compute_coverage(models=None, progress=None) -> tuple[list[ModelResult], dict]:
    """`(results, facts)`: one `ModelResult` per model of open_clip's pretrained list (or of `models`, a subset of
    its names), in sorted order; `facts` holds open_clip's version and the counts of the whole list."""
    open_clip = import_open_clip()
    by_model = pretrained_by_model(open_clip)
    names = list(by_model) if models is None else sorted(models, key=_sort_key)
    unknown = [name for name in names if name not in by_model]
    if unknown:
        raise ValueError(f"not in open_clip's pretrained list: {', '.join(unknown)}")
    results = []
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "no pretrained weights loaded" for every model
    try:
        for name in names:
            started = time.perf_counter()
            results.append(check_model(open_clip, name, by_model[name]))
            if progress:
                progress(f"{name}: {results[-1].status} ({time.perf_counter() - started:.1f} s)")
    finally:
        logging.disable(previous)
    facts = {"open_clip_version": open_clip.__version__, "pairs": sum(map(len, by_model.values())),
             "models": len(by_model)}
    return results, facts


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(results: list[ModelResult], facts: dict) -> str:
    """The coverage table, the total line and the list of models that do not convert, in Markdown."""
    families = {name: [0, 0, 0, 0] for name in FAMILY_NAMES}  # pairs converting, pairs, models converting, models
    for result in results:
        counts = families.setdefault(result.family, [0, 0, 0, 0])
        ok = result.status == CONVERTS
        counts[0] += len(result.tags) * ok
        counts[1] += len(result.tags)
        counts[2] += ok
        counts[3] += 1
    rules = dict(FAMILIES)
    lines = [
        (f"Computed from open_clip {facts['open_clip_version']}'s `list_pretrained()`: {facts['pairs']} (model, tag) "
         f"pairs, {facts['models']} models."),
        "",
        "| Family | (model, tag) pairs that convert | models that convert | rule on the model config |",
        "|---|---|---|---|",
    ]
    for name, (pairs_ok, pairs, models_ok, models) in families.items():
        if models:
            lines.append(f"| {name} | {pairs_ok} of {pairs} | {models_ok} of {models} | {rules.get(name, '')} |")
    total_ok = sum(counts[0] for counts in families.values())
    total = sum(counts[1] for counts in families.values())
    lines += ["", f"**{total_ok} of {total} (model, tag) pairs convert.**"]
    refused = [result for result in results if result.status != CONVERTS]
    if refused:
        lines += ["", "Models that do not convert, with the reason (every tag of a model shares its architecture):", "",
                  "| Family | Model | Tags | Why not |", "|---|---|---|---|"]
        order = {name: index for index, name in enumerate(families)}
        for result in sorted(refused, key=lambda r: (order[r.family], _sort_key(r.model))):
            status = "" if result.status == REFUSED else f"({result.status}) "
            lines.append(f"| {result.family} | `{result.model}` | {', '.join(result.tags)} | "
                         f"{status}{_escape(result.reason or '')} |")
    return "\n".join(lines) + "\n"


def per_pair(results: list[ModelResult]) -> list[dict]:
    rows = []
    for result in results:
        fields = {k: v for k, v in asdict(result).items() if k != "tags"}
        rows.extend({"model": result.model, "tag": tag, **fields} for tag in result.tags)
    return rows


def readme_section(text: str) -> str:
    """What README text holds between the coverage markers (without the blank lines next to them)."""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"README has no {START_MARKER} ... {END_MARKER} markers (in this order)")
    return text[start + len(START_MARKER): end].strip("\n") + "\n"


def replace_readme_section(text: str, table: str) -> str:
    readme_section(text)  # checks the markers
    start, end = text.index(START_MARKER) + len(START_MARKER), text.index(END_MARKER)
    return text[:start] + "\n" + table.strip("\n") + "\n" + text[end:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-readme", metavar="README", type=Path,
                        help="replace the table between the openclip-coverage markers of this file")
    parser.add_argument("--json", metavar="PATH", type=Path, help="write the per-(model, tag) results as JSON")
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="only these models (their tags)")
    parser.add_argument("--progress", action="store_true", help="report each model on stderr")
    args = parser.parse_args(argv)
    if args.models and args.write_readme:
        parser.error("--write-readme writes the whole list's table; it does not go with --models")

    started = time.perf_counter()
    report = (lambda line: print(line, file=sys.stderr, flush=True)) if args.progress else None
    try:
        results, facts = compute_coverage(args.models, report)
    except ValueError as error:  # a --models name not in the list
        parser.error(str(error))
    table = render_markdown(results, facts)
    if args.json:
        args.json.write_text(json.dumps(dict(facts, results=per_pair(results)), indent=2) + "\n", encoding="utf-8")
    if args.write_readme:
        text = args.write_readme.read_text(encoding="utf-8")
        args.write_readme.write_text(replace_readme_section(text, table), encoding="utf-8")
    else:
        sys.stdout.write(table)
    converting = sum(len(r.tags) for r in results if r.status == CONVERTS)
    pairs = sum(len(r.tags) for r in results)
    print(f"{converting} of {pairs} (model, tag) pairs convert ({len(results)} models, "
          f"{time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

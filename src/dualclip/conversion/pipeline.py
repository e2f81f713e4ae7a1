"""What every conversion shares: output options, the result, and writing a dualclip folder."""

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .building import build_model
from .errors import ConversionError
from .model_card import CardFacts, layers, write_model_card
from .preprocessing import save_image_processor, save_tokenizer
from .verify import Verification, verify_transformers_pair
from .writing import check_output, save_model, staged_output, transformers_progress_bars

DEFAULT_MAX_SHARD_SIZE = "5GB"
_SIZE_UNITS = {
    "": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
}


@dataclass
class ConversionResult:
    """What a conversion wrote.

    Attributes:
        output: the folder written.
        source_kind: `"openai"`, `"openclip"`, `"hf"`, or `"dualclip"` for an export to transformers CLIP.
        model_class: the class the folder loads as (`"DualClipModel"`, `"CLIPModel"`, ...).
        architecture: e.g. `"ViT-B/32"`, or a description of the sizes.
        num_parameters: parameter count.
        dtype: dtype of the floating-point weights written.
        verification: the comparison with the reference implementation (`None` without `verify=True`).
        notes: what the conversion could not do or chose (also in the model card).
    """

    output: Path
    source_kind: str
    model_class: str
    architecture: str
    num_parameters: int
    dtype: str
    verification: Verification | None = None
    notes: list[str] = field(default_factory=list)


def parse_shard_size(size) -> int:
    """Bytes in a shard-size limit given as an int or a string such as `"5GB"`, `"500MB"` or `"2GiB"`."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", str(size), flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ConversionError(f"max shard size must look like 5GB, 500MB or 2GiB; got {size!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").upper()])


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class OutputOptions:
    """Where and how a conversion writes (validated by `output_options`)."""

    out: Path
    overwrite: bool
    max_shard_size: int
    verify: bool
    progress: bool


def write_dualclip_folder(
    output: OutputOptions, model_class, config, tensors: dict, *, card: dict, notes: list, tokenizer, image, verifier
) -> ConversionResult:
    """Builds `model_class` from `tensors` (consumed) and writes its folder atomically: weights and config, image
    processor (`image`: its settings, or None), tokenizer (`tokenizer`: arguments of `save_tokenizer`, a writer
    `tokenizer(folder) -> note or None` called after the image processor is written, or None),
    verification (`verifier(folder, dtype)`, when asked for), and the model card (`card`: `CardFacts` fields)."""
    model = build_model(model_class, config, tensors)
    tensors.clear()
    num_parameters = model.num_parameters()
    dtype = model.dtype
    notes = list(notes)
    with staged_output(output.out, output.overwrite) as staging:
        save_model(model, staging, output.max_shard_size, output.progress)
        del model
        if image is not None:
            notes.append(save_image_processor(staging, image))
        if callable(tokenizer):
            notes.append(tokenizer(staging))
        elif tokenizer is not None:
            notes.append(save_tokenizer(staging, **tokenizer))
        verification = None
        if output.verify:
            with transformers_progress_bars(output.progress):
                verification = verifier(staging, dtype)
            if verification.passed is False:
                raise ConversionError(f"verification {verification.summary()}; nothing was written")
        notes = [note for note in notes if note]
        facts = CardFacts(
            num_parameters=num_parameters,
            dtype=dtype_name(dtype),
            model_class=model_class.__name__,
            verification=verification.summary() if verification else "not run (convert with --verify)",
            notes=notes,
            **card,
        )
        write_model_card(staging, facts)
    return ConversionResult(
        output=Path(output.out),
        source_kind=card["source_kind"],
        model_class=model_class.__name__,
        architecture=card["architecture"],
        num_parameters=num_parameters,
        dtype=dtype_name(dtype),
        verification=verification,
        notes=notes,
    )


def output_options(out, overwrite, max_shard_size, verify, progress, sources) -> OutputOptions:
    """Checks OUT and the shard size before any work is done."""
    check_output(out, overwrite, sources)
    return OutputOptions(Path(out), overwrite, parse_shard_size(max_shard_size), verify, progress)


def folder_verifier(reference_class, reference_folder, ours_class, reference_name):
    """A verifier comparing the folder written (loaded with `ours_class`) with `reference_class` loaded from
    `reference_folder`."""

    def verifier(folder, written_dtype):
        reference = reference_class.from_pretrained(reference_folder, dtype=torch.float32)
        ours = ours_class.from_pretrained(folder, dtype=torch.float32)
        return verify_transformers_pair(ours, reference, reference_name, written_dtype)

    return verifier


def describe_towers(config, class_name: str) -> str:
    """`"<class>: ViT image tower (...), text tower (...)"` for the model card."""
    parts = []
    text = getattr(config, "text_config", config if "Text" in class_name else None)
    vision = getattr(config, "vision_config", config if "Vision" in class_name else None)
    if vision is not None:
        if hasattr(vision, "resnet_layers"):
            blocks = "-".join(map(str, vision.resnet_layers))
            parts.append(f"ResNet image tower (width {vision.resnet_width}, blocks {blocks}) at {vision.image_size}px")
        elif vision.model_type == "dualclip_convnext_vision_model":
            widths, blocks = "-".join(map(str, vision.hidden_sizes)), "-".join(map(str, vision.depths))
            parts.append(f"ConvNeXt image tower (widths {widths}, blocks {blocks}) at {vision.image_size}px")
        elif vision.model_type == "dualclip_vitamin_vision_model":
            stages = "-".join(map(str, vision.conv_stage_sizes))
            parts.append(f"ViTamin image tower (convolution stages {stages}, width {vision.hidden_size}, "
                         f"{layers(vision.num_hidden_layers)}) at {vision.image_size}px")
        elif vision.model_type == "dualclip_fastvit_vision_model":
            widths, blocks = "-".join(map(str, vision.hidden_sizes)), "-".join(map(str, vision.depths))
            form = "reparameterised" if vision.reparameterized else "training-time form"
            parts.append(f"FastViT image tower (widths {widths}, blocks {blocks}, {form}) at {vision.image_size}px")
        else:
            parts.append(f"ViT image tower (width {vision.hidden_size}, {layers(vision.num_hidden_layers)}, "
                         f"patch {vision.patch_size}) at {vision.image_size}px")
    if text is not None:
        parts.append(f"text tower (width {text.hidden_size}, {layers(text.num_hidden_layers)})")
    return f"{class_name}: " + ", ".join(parts)

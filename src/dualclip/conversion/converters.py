"""The conversions, end to end: read safely, translate, write atomically, optionally verify, describe in a card."""

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import modeling_dualclip
from ..configuration_dualclip import CLIP_MODEL_TYPES
from .building import build_model, convert_tensors, resolve_dtype
from .clip_layout import plan_conversion, text_prefix_of
from .errors import ConversionError
from .hf import (
    CLIP_TO_DUALCLIP,
    DUALCLIP_TO_CLIP,
    clip_config_from_dualclip,
    dualclip_config_from_clip,
    dualclip_config_from_folder,
    import_plan,
    model_class_name,
    read_folder_config,
    read_folder_weights,
)
from .model_card import CardFacts, write_model_card
from .openai import OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD, architecture_name, openai_config
from .openclip import (
    HUB_CONFIG_NAME,
    HUB_WEIGHTS_NAMES,
    image_settings,
    openclip_config,
    openclip_model_config_path,
    read_openclip_json,
)
from .preprocessing import (
    EOS_PAD_TOKEN,
    OPENAI_PAD_TOKEN,
    image_settings_of,
    pad_token_of,
    read_json,
    save_image_processor,
    save_tokenizer,
)
from .reading import Checkpoint, read_checkpoint
from .verify import Verification, verify_openai, verify_openclip, verify_transformers_pair
from .writing import check_output, save_model, staged_output, transformers_progress_bars

SOURCES = ("openai", "openclip", "hf")
DEFAULT_MAX_SHARD_SIZE = "5GB"
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_OPENCLIP_ONLY_KEYS = ("logit_bias", "text_projection.weight", "transformer.resblocks.0.ls_1.gamma")


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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------------------------------------------------
# Source detection
# ----------------------------------------------------------------------------------------------------------------------


def _folder_kind(folder: Path) -> str:
    if (folder / HUB_CONFIG_NAME).is_file():
        return "openclip"
    if (folder / "config.json").is_file():
        model_type = read_folder_config(folder).get("model_type")
        if model_type in CLIP_MODEL_TYPES:
            return "hf"
        if isinstance(model_type, str) and model_type.startswith("dualclip"):
            return "dualclip"
        raise ConversionError(f"{folder} holds a {model_type!r} model, not CLIP")
    raise ConversionError(
        f"cannot tell what {folder} holds: expected an OpenCLIP hub folder ({HUB_CONFIG_NAME}) or a transformers "
        "folder (config.json)"
    )


def _checkpoint_kind(checkpoint: Checkpoint) -> str:
    if checkpoint.format == "torchscript":
        return "openai"
    keys = checkpoint.tensors.keys()
    openclip_only = any(k in checkpoint.tensors for k in _OPENCLIP_ONLY_KEYS) or text_prefix_of(keys)
    if checkpoint.wrapped or checkpoint.had_module_prefix or openclip_only:
        return "openclip"
    return "openai"


def detect_source(src) -> str:
    """`"openai"`, `"openclip"`, `"hf"` or `"dualclip"`: what `src` holds (a file is read, safely, to tell)."""
    src = Path(src)
    if src.is_dir():
        return _folder_kind(src)
    return _checkpoint_kind(read_checkpoint(src))


# ----------------------------------------------------------------------------------------------------------------------
# Writing a dualclip folder
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _Output:
    out: Path
    overwrite: bool
    max_shard_size: int
    verify: bool
    progress: bool


def _write_dualclip(output: _Output, model_class, config, tensors: dict, *, card: dict, tokenizer, image, verifier):
    """Builds the model from `tensors` (consumed), writes the folder with tokenizer, image processor and card."""
    model = build_model(model_class, config, tensors)
    tensors.clear()
    num_parameters = model.num_parameters()
    dtype = model.dtype
    notes = list(card.pop("notes", []))
    with staged_output(output.out, output.overwrite) as staging:
        save_model(model, staging, output.max_shard_size, output.progress)
        del model
        if tokenizer is not None:
            notes.append(save_tokenizer(staging, **tokenizer))
        if image is not None:
            notes.append(save_image_processor(staging, **image))
        verification = None
        if output.verify:
            with transformers_progress_bars(output.progress):
                verification = verifier(staging, dtype)
            if verification.passed is False:
                raise ConversionError(f"verification {verification.summary()}; nothing was written")
        notes = [note for note in notes if note]
        facts = CardFacts(
            num_parameters=num_parameters,
            dtype=_dtype_name(dtype),
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
        dtype=_dtype_name(dtype),
        verification=verification,
        notes=notes,
    )


def _output(out, overwrite, max_shard_size, verify, progress, sources) -> _Output:
    check_output(out, overwrite, sources)
    return _Output(Path(out), overwrite, parse_shard_size(max_shard_size), verify, progress)


# ----------------------------------------------------------------------------------------------------------------------
# OpenAI
# ----------------------------------------------------------------------------------------------------------------------


def _convert_openai(checkpoint: Checkpoint, output: _Output, dtype) -> ConversionResult:
    if checkpoint.wrapped or checkpoint.had_module_prefix:
        raise ConversionError(
            f"{checkpoint.path} is a training checkpoint (weights under `state_dict`, or DDP's `module.` prefix), not "
            "an OpenAI release; convert it with --from openclip and its model config"
        )
    config, facts = openai_config(checkpoint.tensors)
    target = resolve_dtype(dtype, checkpoint.tensors.float_dtypes())
    plan = plan_conversion(checkpoint.tensors.keys(), facts)
    tensors = convert_tensors(checkpoint.tensors, plan, target, output.progress)
    path = checkpoint.path
    notes = []
    if checkpoint.format == "torchscript":
        notes.append("Read from a TorchScript archive: only its tensors were taken; none of its code was run.")
    if config.text_config.pooling == "eos":
        notes.append("Text pooling at the first end-of-text token: the same as OpenAI's argmax rule on any input "
                     "holding one, and it keeps working after tokens are added.")

    def verifier(folder, written_dtype):
        state = read_checkpoint(path).tensors
        return verify_openai({k: state.pop(k) for k in state.keys()}, folder, written_dtype)

    return _write_dualclip(
        output,
        modeling_dualclip.DualClipModel,
        config,
        tensors,
        card=dict(
            title=f"OpenAI CLIP {architecture_name(facts)} (dualclip)",
            source_kind="openai",
            source_description="an OpenAI CLIP checkpoint",
            source=f"`{path.name}` ({checkpoint.format})",
            architecture=architecture_name(facts),
            notes=notes,
        ),
        tokenizer=dict(pad_token=OPENAI_PAD_TOKEN, model_max_length=facts.context_length, vocab_size=facts.vocab_size),
        image=dict(image_size=facts.image_size, mean=OPENAI_IMAGE_MEAN, std=OPENAI_IMAGE_STD),
        verifier=verifier,
    )


def convert_openai_checkpoint(
    src, out, *, dtype=None, max_shard_size=DEFAULT_MAX_SHARD_SIZE, verify=False, overwrite=False, progress=False
) -> ConversionResult:
    """Converts an OpenAI CLIP checkpoint (a released TorchScript archive or a plain state-dict `.pt`) to a dualclip
    folder. The architecture (ViT-B/32 ... RN50x64) is read from the tensor shapes.

    Args:
        src: the checkpoint file.
        out: the folder to write; it must not exist unless `overwrite=True`.
        dtype: `"float32"`, `"float16"` or `"bfloat16"`; by default the source's dtype when all its floating-point
            tensors share one, else float32 (OpenAI's archives mix float16 and float32).
        max_shard_size: weights above this size are split into shards with an index (`"5GB"`, `"500MB"`, bytes).
        verify: compare with OpenAI's `clip` implementation (when importable) on fixed inputs; a failed comparison
            raises and writes nothing.
        overwrite: replace an existing `out` (only once the new folder is complete).
        progress: show progress bars.
    """
    output = _output(out, overwrite, max_shard_size, verify, progress, [src])
    return _convert_openai(read_checkpoint(src, progress), output, dtype)


# ----------------------------------------------------------------------------------------------------------------------
# OpenCLIP
# ----------------------------------------------------------------------------------------------------------------------


def _openclip_weights(folder: Path) -> Path:
    for name in HUB_WEIGHTS_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder} has no OpenCLIP weights ({', '.join(HUB_WEIGHTS_NAMES)})")


def _openclip_model_config(src: Path, model_config, model_name) -> tuple[dict, dict, str]:
    """`(model_cfg, preprocess_cfg, name)` from the explicit options, else from a hub folder's config."""
    if model_config is not None and model_name is not None:
        raise ConversionError("give either --openclip-config or --openclip-model, not both")
    if model_config is not None:
        if isinstance(model_config, dict):
            cfg, preprocess = (model_config["model_cfg"], model_config.get("preprocess_cfg") or {}) if "model_cfg" in model_config else (model_config, {})
            return cfg, preprocess, "custom OpenCLIP model"
        cfg, preprocess = read_openclip_json(model_config)
        return cfg, preprocess, Path(model_config).stem
    if model_name is not None:
        cfg, preprocess = read_openclip_json(openclip_model_config_path(model_name))
        return cfg, preprocess, model_name
    if src.is_dir():
        cfg, preprocess = read_openclip_json(src / HUB_CONFIG_NAME)
        return cfg, preprocess, src.name
    raise ConversionError(
        f"{src} is a raw OpenCLIP checkpoint; its architecture needs the model config: pass --openclip-config "
        "(a model-config JSON) or --openclip-model (a standard OpenCLIP model name such as ViT-B-32)"
    )


def _convert_openclip(src: Path, checkpoint: Checkpoint, output: _Output, dtype, model_cfg, preprocess, name):
    config, facts = openclip_config(model_cfg, checkpoint.tensors)
    target = resolve_dtype(dtype, checkpoint.tensors.float_dtypes())
    plan = plan_conversion(checkpoint.tensors.keys(), facts)
    tensors = convert_tensors(checkpoint.tensors, plan, target, output.progress)
    image = image_settings(model_cfg, preprocess)
    notes = []
    if facts.text_prefix:
        notes.append("Custom-text layout (`text.` prefix) read into dualclip's standard layout.")
    if checkpoint.wrapped:
        epoch = checkpoint.metadata.get("epoch")
        notes.append(f"Weights taken from a training checkpoint{f' (epoch {epoch})' if epoch is not None else ''}.")
    if not preprocess:
        notes.append("Image mean and std are OpenCLIP's defaults (OpenAI's values): the checkpoint does not say which "
                     "ones its pretrained tag used.")
    weights_path = checkpoint.path
    architecture = f"{name}: {architecture_name(facts)}"

    def verifier(folder, written_dtype):
        return verify_openclip(weights_path, model_cfg, folder, written_dtype)

    return _write_dualclip(
        output,
        modeling_dualclip.DualClipModel,
        config,
        tensors,
        card=dict(
            title=f"OpenCLIP {name} (dualclip)",
            source_kind="openclip",
            source_description="an OpenCLIP checkpoint",
            source=f"`{src.name}` ({'hub folder' if src.is_dir() else checkpoint.format})",
            architecture=architecture,
            notes=notes,
        ),
        tokenizer=dict(pad_token=OPENAI_PAD_TOKEN, model_max_length=facts.context_length, vocab_size=facts.vocab_size),
        image=image,
        verifier=verifier,
    )


def convert_openclip_checkpoint(
    src,
    out,
    *,
    model_config=None,
    model_name: str | None = None,
    dtype=None,
    max_shard_size=DEFAULT_MAX_SHARD_SIZE,
    verify=False,
    overwrite=False,
    progress=False,
) -> ConversionResult:
    """Converts an OpenCLIP checkpoint to a dualclip folder.

    `src` is a hub-style folder (`open_clip_config.json` with `open_clip_model.safetensors` or
    `open_clip_pytorch_model.bin`) or a checkpoint file (a training checkpoint `{"state_dict": {"module.…"}, ...}` or
    a plain state dict), whose architecture then comes from `model_config` (a model-config JSON path, a hub
    `open_clip_config.json`, or the dict itself) or `model_name` (a standard OpenCLIP model such as `"ViT-H-14"`, read
    from the installed `open_clip` package's `model_configs/` without importing it). Options dualclip cannot express
    raise `ConversionError` naming the option. Other arguments as in [`convert_openai_checkpoint`] (`verify` compares
    with `open_clip`).
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    output = _output(out, overwrite, max_shard_size, verify, progress, [src])
    model_cfg, preprocess, name = _openclip_model_config(src, model_config, model_name)
    weights = _openclip_weights(src) if src.is_dir() else src
    checkpoint = read_checkpoint(weights, progress)
    return _convert_openclip(src, checkpoint, output, dtype, model_cfg, preprocess, name)


# ----------------------------------------------------------------------------------------------------------------------
# transformers CLIP -> dualclip
# ----------------------------------------------------------------------------------------------------------------------


def _verify_against_folder(reference_class, reference_folder, ours_class, ours_folder, reference_name):
    def verifier(folder, written_dtype):
        reference = reference_class.from_pretrained(reference_folder, dtype=torch.float32)
        ours = ours_class.from_pretrained(folder if ours_folder is None else ours_folder, dtype=torch.float32)
        return verify_transformers_pair(ours, reference, reference_name, written_dtype)

    return verifier


def convert_hf_clip(
    src, out, *, dtype=None, max_shard_size=DEFAULT_MAX_SHARD_SIZE, verify=False, overwrite=False, progress=False
) -> ConversionResult:
    """Converts a transformers CLIP folder (`CLIPModel`, `CLIPTextModel[WithProjection]`,
    `CLIPVisionModel[WithProjection]`) to the matching dualclip class. Tensors are copied unchanged (same layout);
    `dtype` by default keeps the source's. The tokenizer keeps the source's pad token (EOS when it does not say).
    Other arguments as in [`convert_openai_checkpoint`] (`verify` compares with the transformers class)."""
    import transformers

    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"--from hf expects a transformers CLIP folder; {src} is not a folder")
    output = _output(out, overwrite, max_shard_size, verify, progress, [src])
    config_dict = read_folder_config(src)
    config = dualclip_config_from_clip(src, config_dict)
    source = read_folder_weights(src, progress)
    clip_class = model_class_name(config_dict, source.keys())
    dual_class = getattr(modeling_dualclip, CLIP_TO_DUALCLIP[clip_class][0])
    target = resolve_dtype(dtype, source.float_dtypes())
    tensors = convert_tensors(source, import_plan(source.keys(), clip_class), target, output.progress)

    text = getattr(config, "text_config", config if clip_class.startswith("CLIPText") else None)
    vision = getattr(config, "vision_config", config if clip_class.startswith("CLIPVision") else None)
    tokenizer = image = None
    if text is not None:
        pad = pad_token_of(src) or EOS_PAD_TOKEN
        tokenizer = dict(pad_token=pad, model_max_length=text.max_position_embeddings, vocab_size=text.vocab_size)
    if vision is not None:
        image = image_settings_of(src, vision.image_size, OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD)
    return _write_dualclip(
        output,
        dual_class,
        config,
        tensors,
        card=dict(
            title=f"{src.name} (dualclip)",
            source_kind="hf",
            source_description=f"a transformers `{clip_class}` folder",
            source=f"`{src.name}`",
            architecture=_describe(config, clip_class),
            notes=[],
        ),
        tokenizer=tokenizer,
        image=image,
        verifier=_verify_against_folder(getattr(transformers, clip_class), src, dual_class, None, f"transformers {clip_class}"),
    )


def _describe(config, class_name: str) -> str:
    parts = []
    text = getattr(config, "text_config", config if "Text" in class_name else None)
    vision = getattr(config, "vision_config", config if "Vision" in class_name else None)
    if vision is not None:
        if vision.backbone == "resnet":
            parts.append(f"ResNet image tower (width {vision.resnet_width}, blocks {vision.resnet_layers}) at {vision.image_size}px")
        else:
            parts.append(f"ViT image tower (width {vision.hidden_size}, {vision.num_hidden_layers} layers, "
                         f"patch {vision.patch_size}) at {vision.image_size}px")
    if text is not None:
        parts.append(f"text tower (width {text.hidden_size}, {text.num_hidden_layers} layers)")
    return f"{class_name}: " + ", ".join(parts)


# ----------------------------------------------------------------------------------------------------------------------
# dualclip -> transformers CLIP
# ----------------------------------------------------------------------------------------------------------------------


_IMAGE_SETTINGS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std", "do_convert_rgb",
)


def _bpe_vocab_and_merges(folder: Path):
    """OpenAI's BPE vocabulary and merges from a dualclip folder's `tokenizer.json`, or `None`."""
    model = read_json(folder / "tokenizer.json").get("model") or {}
    if model.get("type") != "BPE" or not model.get("vocab") or not model.get("merges"):
        return None
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _save_clip_companions(src: Path, staging: Path, config) -> list[str]:
    """Stock CLIP tokenizer and image-processor files from the dualclip folder's own."""
    import transformers

    notes = []
    text = getattr(config, "text_config", config if config.model_type.endswith("text_model") else None)
    bpe = _bpe_vocab_and_merges(src) if text is not None else None
    if bpe is not None:
        transformers.CLIPTokenizer(
            vocab=bpe[0],
            merges=bpe[1],
            pad_token=pad_token_of(src) or EOS_PAD_TOKEN,
            model_max_length=text.max_position_embeddings,
        ).save_pretrained(staging)
        notes.append("Tokenizer written as transformers' CLIPTokenizer, which differs from OpenAI's (and dualclip's) "
                     "on some inputs (HTML entities, curly quotes, ligatures).")
    processor = read_json(src / "preprocessor_config.json")
    if processor and not config.model_type.endswith("text_model"):
        # DualClipImageProcessor's settings are CLIPImageProcessor's (same names, same pixels).
        transformers.CLIPImageProcessorPil(**{k: v for k, v in processor.items() if k in _IMAGE_SETTINGS}).save_pretrained(staging)
    return notes


def export_to_hf_clip(
    src, out, *, dtype=None, max_shard_size=DEFAULT_MAX_SHARD_SIZE, verify=False, overwrite=False, progress=False
) -> ConversionResult:
    """Exports a dualclip folder to stock transformers CLIP (`CLIPModel` and the tower classes) with the same
    tensors. Models stock CLIP cannot express (ResNet towers, LayerScale, projection biases, pooling other than
    EOS/argmax, no causal mask, no pre-norm, a logit bias) raise `ConversionError` naming the feature. Other
    arguments as in [`convert_openai_checkpoint`] (`verify` compares the exported model with the dualclip one)."""
    import transformers
    from huggingface_hub import save_torch_state_dict

    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"exporting to transformers CLIP needs a dualclip folder; {src} is not a folder")
    output = _output(out, overwrite, max_shard_size, verify, progress, [src])
    config_dict = read_folder_config(src)
    config = dualclip_config_from_folder(src, config_dict)
    clip_config = clip_config_from_dualclip(config)
    source = read_folder_weights(src, progress)
    dual_name = model_class_name(config_dict, source.keys())
    dual_class = getattr(modeling_dualclip, dual_name)
    clip_name = DUALCLIP_TO_CLIP[dual_name]
    target = resolve_dtype(dtype, source.float_dtypes())
    tensors = convert_tensors(source, {k: [(k, None)] for k in source.keys()}, target, output.progress)
    model = build_model(dual_class, config, tensors)  # checks names and shapes
    num_parameters = model.num_parameters()
    del model
    clip_config.architectures = [clip_name]
    clip_config.dtype = _dtype_name(target)
    verification = None
    with staged_output(output.out, output.overwrite) as staging:
        clip_config.save_pretrained(staging)
        save_torch_state_dict(tensors, staging, max_shard_size=output.max_shard_size, metadata={"format": "pt"})
        tensors.clear()
        notes = _save_clip_companions(src, staging, config)
        if output.verify:
            verifier = _verify_against_folder(dual_class, src, getattr(transformers, clip_name), None, f"dualclip {dual_name}")
            with transformers_progress_bars(output.progress):
                verification = verifier(staging, target)
            # Here the reference is the dualclip model and ours the exported CLIP one.
            if verification.passed is False:
                raise ConversionError(f"verification {verification.summary()}; nothing was written")
        facts = CardFacts(
            title=f"{src.name} (transformers CLIP)",
            source_kind="dualclip",
            source_description=f"the dualclip `{dual_name}` folder `{src.name}`",
            source=f"`{src.name}`",
            architecture=_describe(config, clip_name),
            num_parameters=num_parameters,
            dtype=_dtype_name(target),
            model_class=clip_name,
            verification=verification.summary() if verification else "not run (convert with --verify)",
            notes=notes,
        )
        write_model_card(staging, facts)
    return ConversionResult(Path(out), "dualclip", clip_name, facts.architecture, num_parameters,
                            _dtype_name(target), verification, notes)


# ----------------------------------------------------------------------------------------------------------------------
# Any source
# ----------------------------------------------------------------------------------------------------------------------


def convert_checkpoint(
    src,
    out,
    source: str | None = None,
    *,
    to: str = "dualclip",
    openclip_config=None,
    openclip_model: str | None = None,
    dtype=None,
    max_shard_size=DEFAULT_MAX_SHARD_SIZE,
    verify=False,
    overwrite=False,
    progress=False,
) -> ConversionResult:
    """Converts `src` to a dualclip folder `out` (or, with `to="hf"`, a dualclip folder to transformers CLIP).

    `source` is `"openai"`, `"openclip"` or `"hf"`; detected when `None` (an OpenCLIP config or model name implies
    `"openclip"`). See [`convert_openai_checkpoint`], [`convert_openclip_checkpoint`], [`convert_hf_clip`] and
    [`export_to_hf_clip`] for the arguments.
    """
    options = dict(dtype=dtype, max_shard_size=max_shard_size, verify=verify, overwrite=overwrite, progress=progress)
    if to not in ("dualclip", "hf"):
        raise ConversionError(f"--to must be dualclip or hf; got {to!r}")
    if source is not None and source not in SOURCES:
        raise ConversionError(f"--from must be one of {', '.join(SOURCES)}; got {source!r}")
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if to == "hf":
        if source is not None:
            raise ConversionError("--to hf exports a dualclip folder; --from does not apply")
        return export_to_hf_clip(src, out, **options)
    if openclip_config is not None or openclip_model is not None:
        if source not in (None, "openclip"):
            raise ConversionError(f"--openclip-config/--openclip-model apply to --from openclip, not --from {source}")
        source = "openclip"

    if src.is_dir():
        kind = _folder_kind(src)
        if kind == "dualclip":
            raise ConversionError(f"{src} is already a dualclip folder; pass --to hf to export it to transformers CLIP")
        if source is not None and source != kind:
            expected = {"openai": "a checkpoint file", "openclip": f"a hub folder with {HUB_CONFIG_NAME} or a "
                        "checkpoint file", "hf": "a transformers CLIP folder"}[source]
            raise ConversionError(f"--from {source} expects {expected}, but {src} is {_KIND_NAMES[kind]}")
        if kind == "hf":
            return convert_hf_clip(src, out, **options)
        return convert_openclip_checkpoint(src, out, model_config=openclip_config, model_name=openclip_model, **options)

    if source == "hf":
        raise ConversionError(f"--from hf expects a transformers CLIP folder, but {src} is a file")
    output = _output(out, overwrite, max_shard_size, verify, progress, [src])
    if source == "openclip":
        model_cfg, preprocess, name = _openclip_model_config(src, openclip_config, openclip_model)
        return _convert_openclip(src, read_checkpoint(src, progress), output, dtype, model_cfg, preprocess, name)
    checkpoint = read_checkpoint(src, progress)
    kind = source or _checkpoint_kind(checkpoint)
    if kind == "openclip":
        model_cfg, preprocess, name = _openclip_model_config(src, openclip_config, openclip_model)
        return _convert_openclip(src, checkpoint, output, dtype, model_cfg, preprocess, name)
    return _convert_openai(checkpoint, output, dtype)


_KIND_NAMES = {
    "openclip": "an OpenCLIP hub folder",
    "hf": "a transformers CLIP folder",
    "dualclip": "a dualclip folder",
}

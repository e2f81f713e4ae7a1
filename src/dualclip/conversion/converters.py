"""The conversions to dualclip, end to end: read safely, translate, write atomically, verify on request, describe in
a model card; and `convert_checkpoint`, which detects the source."""

from pathlib import Path

import torch

from .. import modeling_dualclip
from ..configuration_dualclip_base import CLIP_MODEL_TYPES
from .building import convert_tensors, resolve_dtype
from .clip_layout import plan_conversion, text_prefix_of
from .errors import ConversionError
from .export import export_to_hf_clip
from .hf import (
    CLIP_TO_DUALCLIP,
    dualclip_config_from_clip,
    import_plan,
    model_class_name,
    read_folder_config,
    read_folder_weights,
)
from .hf_text import convert_hf_text_model, hf_text_model_name, read_encoder_config
from .openai import OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD, architecture_name, openai_config
from .openclip import (
    HUB_CONFIG_NAME,
    HUB_WEIGHTS_NAMES,
    image_settings,
    openclip_config,
    openclip_model_config_path,
    read_openclip_json,
)
from .pipeline import (
    DEFAULT_MAX_SHARD_SIZE,
    ConversionResult,
    OutputOptions,
    describe_towers,
    folder_verifier,
    output_options,
    write_dualclip_folder,
)
from .preprocessing import (
    EOS_PAD_TOKEN,
    OPENAI_PAD_TOKEN,
    image_processor_settings,
    image_processor_settings_of,
    pad_token_of,
    save_carried_tokenizer,
)
from .reading import Checkpoint, read_checkpoint
from .timm_towers import convert_timm_tower_model, timm_model_name
from .verify import verify_openai, verify_openclip

SOURCES = ("openai", "openclip", "hf")
_OPENCLIP_ONLY_KEYS = ("logit_bias", "text_projection.weight", "transformer.resblocks.0.ls_1.gamma")


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


# ----------------------------------------------------------------------------------------------------------------------
# OpenAI
# ----------------------------------------------------------------------------------------------------------------------


def _convert_openai(checkpoint: Checkpoint, output: OutputOptions, dtype) -> ConversionResult:
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

    return write_dualclip_folder(
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
        ),
        notes=notes,
        tokenizer=dict(pad_token=OPENAI_PAD_TOKEN, model_max_length=facts.context_length, vocab_size=facts.vocab_size),
        image=image_processor_settings(facts.image_size, OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD)[0],
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
    output = output_options(out, overwrite, max_shard_size, verify, progress, [src])
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
            if "model_cfg" in model_config:
                return model_config["model_cfg"], model_config.get("preprocess_cfg") or {}, "custom OpenCLIP model"
            return model_config, {}, "custom OpenCLIP model"
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


def _openclip_tokenizer(src: Path, model_cfg: dict, text_config):
    """What to write as the tokenizer: OpenAI's BPE (arguments of `save_tokenizer`) for models that use it, else a
    writer carrying the source folder's tokenizer with OpenCLIP's text defaults."""
    text = model_cfg["text_cfg"]
    if not text.get("hf_tokenizer_name"):
        return dict(pad_token=OPENAI_PAD_TOKEN, model_max_length=text_config.max_position_embeddings,
                    vocab_size=text_config.vocab_size)
    kwargs = text.get("tokenizer_kwargs") or {}

    def write(folder):
        return save_carried_tokenizer(
            # OpenCLIP's tokenizer length (CLIPTextCfg's default 77): a Hugging Face encoder takes longer inputs.
            folder, src if src.is_dir() else None, model_max_length=text.get("context_length", 77),
            # OpenCLIP's HFTokenizer: "whitespace" cleaning unless told, every caption padded to the context length.
            text_cleaning=kwargs.get("clean", "whitespace"), pad_to_max_length=True,
            strip_sep_token=bool(kwargs.get("strip_sep_token", False)),
        )

    return write


def convert_openclip_tensors(model_cfg: dict, source, dtype: torch.dtype, progress: bool = False, hf_text_config=None):
    """`(config, tensors, architecture, notes)`: an OpenCLIP model config checked against the tensors of `source` (a
    `TensorSource`, emptied) and the tensors in dualclip's layout, cast to `dtype`. Writes nothing; raises
    `ConversionError` naming what dualclip cannot express. `hf_text_config`: the config of a Hugging Face text
    encoder (`text_cfg.hf_model_name`; see `hf_text.read_encoder_config`)."""
    notes = []
    if hf_text_model_name(model_cfg):
        config, tensors, family = convert_hf_text_model(model_cfg, source, read_encoder_config(None, hf_text_config),
                                                        dtype)
        return config, tensors, f"{family} ({describe_towers(config, 'DualClipModel')})", notes
    if timm_model_name(model_cfg):
        config, tensors, family = convert_timm_tower_model(model_cfg, source)
        tensors = {key: value.to(dtype) if value.is_floating_point() else value for key, value in tensors.items()}
        return config, tensors, f"{family} ({describe_towers(config, 'DualClipModel')})", notes
    config, facts = openclip_config(model_cfg, source)
    tensors = convert_tensors(source, plan_conversion(source.keys(), facts), dtype, progress)
    if facts.text_prefix:
        notes.append("Custom-text layout (`text.` prefix) read into dualclip's standard layout.")
    if facts.text_class_token:
        notes.append("CoCa: the contrastive towers only (embeddings, zero-shot, retrieval). The captioning decoder "
                     "(`text_decoder.*`) and the 255 attention-pool queries that feed it were not converted; "
                     "dualclip does not generate captions: use open_clip's CoCa for that.")
    return config, tensors, architecture_name(facts), notes


def _convert_openclip(
    src: Path, checkpoint: Checkpoint, output: OutputOptions, dtype, model_cfg, preprocess, name, hf_text_config=None
):
    if hf_text_config is not None and not hf_text_model_name(model_cfg):
        raise ConversionError("--hf-text-config applies to OpenCLIP models whose text tower is a Hugging Face model "
                              f"(text_cfg.hf_model_name); {name} has none")
    encoder_config = read_encoder_config(src, hf_text_config) if hf_text_model_name(model_cfg) else None
    target = resolve_dtype(dtype, checkpoint.tensors.float_dtypes())
    config, tensors, architecture, notes = convert_openclip_tensors(model_cfg, checkpoint.tensors, target,
                                                                    output.progress, encoder_config)
    architecture = f"{name}: {architecture}"
    image, image_note = image_processor_settings(**image_settings(model_cfg, preprocess))
    if image_note:
        notes.append(image_note)
    if checkpoint.wrapped:
        epoch = checkpoint.metadata.get("epoch")
        notes.append(f"Weights taken from a training checkpoint{f' (epoch {epoch})' if epoch is not None else ''}.")
    if not preprocess:
        notes.append("Image mean and std are OpenCLIP's defaults (OpenAI's values): the checkpoint does not say which "
                     "ones its pretrained tag used.")
    weights_path = checkpoint.path

    def verifier(folder, written_dtype):
        return verify_openclip(weights_path, model_cfg, folder, written_dtype, hf_text_config=encoder_config)

    return write_dualclip_folder(
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
        ),
        notes=notes,
        tokenizer=_openclip_tokenizer(src, model_cfg, config.text_config),
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
    hf_text_config=None,
) -> ConversionResult:
    """Converts an OpenCLIP checkpoint to a dualclip folder.

    `src` is a hub-style folder (`open_clip_config.json` with `open_clip_model.safetensors` or
    `open_clip_pytorch_model.bin`) or a checkpoint file (a training checkpoint `{"state_dict": {"module.…"}, ...}` or
    a plain state dict), whose architecture then comes from `model_config` (a model-config JSON path, a hub
    `open_clip_config.json`, or the dict itself) or `model_name` (a standard OpenCLIP model such as `"ViT-H-14"`, read
    from the installed `open_clip` package's `model_configs/` without importing it). Options dualclip cannot express
    raise `ConversionError` naming the option. A model whose text tower is a Hugging Face encoder
    (`text_cfg.hf_model_name`) needs that encoder's config: `config.json` in the `src` folder, or `hf_text_config` (a
    `config.json` path, a folder holding one, or the dict). Other arguments as in [`convert_openai_checkpoint`]
    (`verify` compares with `open_clip`).
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    output = output_options(out, overwrite, max_shard_size, verify, progress, [src])
    model_cfg, preprocess, name = _openclip_model_config(src, model_config, model_name)
    weights = _openclip_weights(src) if src.is_dir() else src
    checkpoint = read_checkpoint(weights, progress)
    return _convert_openclip(src, checkpoint, output, dtype, model_cfg, preprocess, name, hf_text_config)


# ----------------------------------------------------------------------------------------------------------------------
# transformers CLIP -> dualclip
# ----------------------------------------------------------------------------------------------------------------------


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
    output = output_options(out, overwrite, max_shard_size, verify, progress, [src])
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
        image = image_processor_settings_of(src) or image_processor_settings(
            vision.image_size, OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD
        )[0]
    return write_dualclip_folder(
        output,
        dual_class,
        config,
        tensors,
        card=dict(
            title=f"{src.name} (dualclip)",
            source_kind="hf",
            source_description=f"a transformers `{clip_class}` folder",
            source=f"`{src.name}`",
            architecture=describe_towers(config, clip_class),
        ),
        notes=[],
        tokenizer=tokenizer,
        image=image,
        verifier=folder_verifier(getattr(transformers, clip_class), src, dual_class, f"transformers {clip_class}"),
    )


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
    hf_text_config=None,
) -> ConversionResult:
    """Converts `src` to a dualclip folder `out` (or, with `to="hf"`, a dualclip folder to transformers CLIP).

    `source` is `"openai"`, `"openclip"` or `"hf"`; detected when `None` (an OpenCLIP config or model name implies
    `"openclip"`, as does `hf_text_config`). See [`convert_openai_checkpoint`], [`convert_openclip_checkpoint`],
    [`convert_hf_clip`] and [`export_to_hf_clip`] for the arguments.
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
    if openclip_config is not None or openclip_model is not None or hf_text_config is not None:
        if source not in (None, "openclip"):
            raise ConversionError(f"--openclip-config/--openclip-model/--hf-text-config apply to --from openclip, "
                                  f"not --from {source}")
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
        return convert_openclip_checkpoint(src, out, model_config=openclip_config, model_name=openclip_model,
                                           hf_text_config=hf_text_config, **options)

    if source == "hf":
        raise ConversionError(f"--from hf expects a transformers CLIP folder, but {src} is a file")
    output = output_options(out, overwrite, max_shard_size, verify, progress, [src])
    if source == "openclip":
        model_cfg, preprocess, name = _openclip_model_config(src, openclip_config, openclip_model)
        return _convert_openclip(src, read_checkpoint(src, progress), output, dtype, model_cfg, preprocess, name,
                                 hf_text_config)
    checkpoint = read_checkpoint(src, progress)
    kind = source or _checkpoint_kind(checkpoint)
    if kind == "openclip":
        model_cfg, preprocess, name = _openclip_model_config(src, openclip_config, openclip_model)
        return _convert_openclip(src, checkpoint, output, dtype, model_cfg, preprocess, name, hf_text_config)
    return _convert_openai(checkpoint, output, dtype)


_KIND_NAMES = {
    "openclip": "an OpenCLIP hub folder",
    "hf": "a transformers CLIP folder",
    "dualclip": "a dualclip folder",
}

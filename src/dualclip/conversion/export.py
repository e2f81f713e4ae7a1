"""dualclip -> stock transformers: the same tensors under a stock `CLIPConfig` (or `SiglipConfig` for SigLIP towers),
plus stock tokenizer and image-processor files, for every model a stock class expresses."""

from pathlib import Path

from .. import modeling_dualclip
from ..configuration_dualclip import DualClipConfig
from ..modeling_dualclip_siglip import DualClipSiglipTextConfig, DualClipSiglipVisionConfig
from .building import build_model, convert_tensors, resolve_dtype
from .errors import ConversionError
from .hf_text import refuse_stock_export
from .hf import (
    DUALCLIP_TO_CLIP,
    stock_fields,
    clip_config_from_dualclip,
    dualclip_config_from_folder,
    model_class_name,
    read_folder_config,
    read_folder_weights,
)
from .model_card import CardFacts, write_model_card
from .pipeline import (
    DEFAULT_MAX_SHARD_SIZE,
    ConversionResult,
    describe_towers,
    dtype_name,
    folder_verifier,
    output_options,
)
from .preprocessing import EOS_PAD_TOKEN, image_processor_settings_of, pad_token_of, read_json
from .writing import staged_output, transformers_progress_bars

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
    settings = image_processor_settings_of(src)
    if settings and not config.model_type.endswith("text_model"):
        transformers.CLIPImageProcessorPil(**settings).save_pretrained(staging)
    return notes


def _siglip_towers(config) -> bool:
    return isinstance(config, DualClipConfig) and isinstance(config.text_config, DualClipSiglipTextConfig) and (
        isinstance(config.vision_config, DualClipSiglipVisionConfig))


def _siglip_config_from_dualclip(config):
    """Stock `SiglipConfig` for a DualClipModel with both SigLIP towers (their fields are stock's)."""
    from transformers import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

    text = stock_fields(config.text_config, SiglipTextConfig)
    vision = stock_fields(config.vision_config, SiglipVisionConfig)
    return SiglipConfig(text_config=text, vision_config=vision)


def _save_siglip_companions(src: Path, staging: Path, config) -> list[str]:
    """The folder's carried tokenizer, and a stock SigLIP image processor when the preprocessing is SigLIP's
    (squash resize, no crop)."""
    import transformers

    notes = []
    if (src / "tokenizer.json").is_file() or (src / "tokenizer_config.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(src, local_files_only=True, trust_remote_code=False)
        if type(tokenizer).__module__.startswith("dualclip"):
            notes.append("No tokenizer written: the folder's tokenizer is dualclip's OpenAI BPE, which SigLIP does "
                         "not use.")
        else:
            tokenizer.save_pretrained(staging)
            cleaning = read_json(src / "processor_config.json").get("text_cleaning")
            if cleaning:
                notes.append(f"The original cleans captions ({cleaning!r}, see `dualclip.text_cleaning`) and pads "
                             "them to the context length before tokenizing; stock tokenizers do neither by default.")
    settings = image_processor_settings_of(src)
    if settings and not settings.get("do_center_crop", True):
        transformers.SiglipImageProcessorPil(
            **{k: v for k, v in settings.items() if k not in ("do_center_crop", "crop_size")}
        ).save_pretrained(staging)
    elif settings:
        notes.append("No image processor written: the folder's resizes to the short side and crops, which "
                     "SiglipImageProcessor does not do.")
    return notes


def export_to_hf_clip(
    src, out, *, dtype=None, max_shard_size=DEFAULT_MAX_SHARD_SIZE, verify=False, overwrite=False, progress=False
) -> ConversionResult:
    """Exports a dualclip folder to the stock transformers class that computes the same model, with the same
    tensors: transformers CLIP (`CLIPModel` and the tower classes) for CLIP towers, `SiglipModel` for a
    `DualClipModel` with both SigLIP towers (fixed-resolution SigLIP and SigLIP 2). Models stock cannot express (ResNet
    towers, LayerScale, projection biases, pooling other than EOS/argmax or the class token, no causal mask, no
    pre-norm, a logit bias on CLIP towers, one SigLIP tower beside another family) raise `ConversionError` naming
    the feature. Other arguments as in [`convert_openai_checkpoint`] (`verify` compares the exported model with the
    dualclip one)."""
    import transformers
    from huggingface_hub import save_torch_state_dict

    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"exporting to transformers needs a dualclip folder; {src} is not a folder")
    output = output_options(out, overwrite, max_shard_size, verify, progress, [src])
    config_dict = read_folder_config(src)
    config = dualclip_config_from_folder(src, config_dict)
    refuse_stock_export(config)
    source = read_folder_weights(src, progress)
    dual_name = model_class_name(config_dict, source.keys())
    dual_class = getattr(modeling_dualclip, dual_name)
    if _siglip_towers(config):
        stock_name, stock_config, companions = "SiglipModel", _siglip_config_from_dualclip(config), _save_siglip_companions
    else:
        stock_name, stock_config, companions = DUALCLIP_TO_CLIP[dual_name], clip_config_from_dualclip(config), _save_clip_companions
    target = resolve_dtype(dtype, source.float_dtypes())
    tensors = convert_tensors(source, {k: [(k, None)] for k in source.keys()}, target, output.progress)
    model = build_model(dual_class, config, tensors)  # checks names and shapes, copies nothing
    num_parameters = model.num_parameters()
    del model
    if stock_name == "SiglipModel":  # SiglipModel stores the logit scale and bias as 1-element vectors
        tensors = {k: v.reshape(1) if k in ("logit_scale", "logit_bias") else v for k, v in tensors.items()}
    stock_config.architectures = [stock_name]
    stock_config.dtype = dtype_name(target)
    verification = None
    with staged_output(output.out, output.overwrite) as staging:
        stock_config.save_pretrained(staging)
        save_torch_state_dict(tensors, staging, max_shard_size=output.max_shard_size, metadata={"format": "pt"})
        tensors.clear()
        notes = companions(src, staging, config)
        if output.verify:
            verifier = folder_verifier(dual_class, src, getattr(transformers, stock_name), f"dualclip {dual_name}")
            with transformers_progress_bars(output.progress):
                verification = verifier(staging, target)
            if verification.passed is False:
                raise ConversionError(f"verification {verification.summary()}; nothing was written")
        facts = CardFacts(
            title=f"{src.name} (transformers {stock_name.removesuffix('Model')})",
            source_kind="dualclip",
            source_description=f"the dualclip `{dual_name}` folder `{src.name}`",
            source=f"`{src.name}`",
            architecture=describe_towers(config, stock_name),
            num_parameters=num_parameters,
            dtype=dtype_name(target),
            model_class=stock_name,
            verification=verification.summary() if verification else "not run (convert with --verify)",
            notes=notes,
        )
        write_model_card(staging, facts)
    return ConversionResult(Path(out), "dualclip", stock_name, facts.architecture, num_parameters,
                            dtype_name(target), verification, notes)

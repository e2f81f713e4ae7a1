"""dualclip -> transformers CLIP: the same tensors under a stock `CLIPConfig`, plus stock tokenizer and image-processor
files, for every model stock CLIP can express."""

from pathlib import Path

from .. import modeling_dualclip
from .building import build_model, convert_tensors, resolve_dtype
from .errors import ConversionError
from .hf import (
    DUALCLIP_TO_CLIP,
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
    output = output_options(out, overwrite, max_shard_size, verify, progress, [src])
    config_dict = read_folder_config(src)
    config = dualclip_config_from_folder(src, config_dict)
    clip_config = clip_config_from_dualclip(config)
    source = read_folder_weights(src, progress)
    dual_name = model_class_name(config_dict, source.keys())
    dual_class = getattr(modeling_dualclip, dual_name)
    clip_name = DUALCLIP_TO_CLIP[dual_name]
    target = resolve_dtype(dtype, source.float_dtypes())
    tensors = convert_tensors(source, {k: [(k, None)] for k in source.keys()}, target, output.progress)
    model = build_model(dual_class, config, tensors)  # checks names and shapes, copies nothing
    num_parameters = model.num_parameters()
    del model
    clip_config.architectures = [clip_name]
    clip_config.dtype = dtype_name(target)
    verification = None
    with staged_output(output.out, output.overwrite) as staging:
        clip_config.save_pretrained(staging)
        save_torch_state_dict(tensors, staging, max_shard_size=output.max_shard_size, metadata={"format": "pt"})
        tensors.clear()
        notes = _save_clip_companions(src, staging, config)
        if output.verify:
            verifier = folder_verifier(dual_class, src, getattr(transformers, clip_name), f"dualclip {dual_name}")
            with transformers_progress_bars(output.progress):
                verification = verifier(staging, target)
            if verification.passed is False:
                raise ConversionError(f"verification {verification.summary()}; nothing was written")
        facts = CardFacts(
            title=f"{src.name} (transformers CLIP)",
            source_kind="dualclip",
            source_description=f"the dualclip `{dual_name}` folder `{src.name}`",
            source=f"`{src.name}`",
            architecture=describe_towers(config, clip_name),
            num_parameters=num_parameters,
            dtype=dtype_name(target),
            model_class=clip_name,
            verification=verification.summary() if verification else "not run (convert with --verify)",
            notes=notes,
        )
        write_model_card(staging, facts)
    return ConversionResult(Path(out), "dualclip", clip_name, facts.architecture, num_parameters,
                            dtype_name(target), verification, notes)



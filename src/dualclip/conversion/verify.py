"""`--verify`: rebuild the reference model from the source, run both on fixed inputs, report the largest difference.

The references are the original implementations: OpenAI's `clip` package (`clip.model.build_model`), `open_clip`,
and transformers' CLIP classes. `clip` and `open_clip` import torchvision when imported; where that (or the package
itself) is missing, verification is reported as unavailable instead of failing the conversion.

Both models run in float32 on the CPU. The differences allowed scale with the outputs' magnitude and with the
precision of the converted weights.
"""

import copy
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from .errors import ConversionError

# Allowed |difference| / max(1, |reference|), by the dtype of the converted weights.
TOLERANCES = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 1.5e-1}


@dataclass
class Verification:
    """Result of comparing a converted model with its reference implementation."""

    reference: str
    differences: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0
    tolerance: float | None = None
    unavailable: str | None = None

    @property
    def max_difference(self) -> float | None:
        return max(self.differences.values()) if self.differences else None

    @property
    def passed(self) -> bool | None:
        if self.unavailable is not None:
            return None
        return self.max_difference <= self.tolerance * max(1.0, self.scale)

    def summary(self) -> str:
        if self.unavailable is not None:
            return f"not verified: {self.unavailable}"
        verdict = "passed" if self.passed else "FAILED"
        worst = max(self.differences, key=self.differences.get)
        return (
            f"{verdict} against {self.reference}: largest absolute difference {self.max_difference:.3g} "
            f"({worst}; outputs up to {self.scale:.3g}) on fixed inputs"
        )


def verification_inputs(text_config=None, vision_config=None, seed: int = 0):
    """`(pixel_values, input_ids)`: two images of Gaussian noise and two token rows (one full-length, one short and
    padded with the tower's `pad_token_id`, 0 when it has none); `None` for a tower whose config is not given.

    Rows are `[BOS] tokens [EOS] pad...`, with token ids below the end-of-text id so that every pooling rule (first
    EOS, argmax, last) has a well-defined answer, and above the special ids at the start of a vocabulary (RoBERTa,
    XLM-R, NLLB: `<s>` 0, `<pad>` 1, `</s>` 2).
    """
    generator = torch.Generator().manual_seed(seed)
    pixel_values = input_ids = None
    if vision_config is not None:
        size, channels = vision_config.image_size, vision_config.num_channels
        pixel_values = torch.randn(2, channels, size, size, generator=generator)
    if text_config is not None:
        # A tower that appends a class token (CoCa) keeps one position for it.
        vocab = text_config.vocab_size
        length = text_config.max_position_embeddings - getattr(text_config, "append_class_token", False)
        # Towers without a pooling setting (SigLIP) pool the last position.
        eos = text_config.eos_token_id if getattr(text_config, "pooling", "last") in ("eos", "first_eos") else vocab - 1
        bos = text_config.bos_token_id
        bos = bos if bos is not None and bos < eos else None
        pad = getattr(text_config, "pad_token_id", None) or 0
        specials = {i for i in (bos, eos, text_config.eos_token_id, pad) if isinstance(i, int)}
        low = 1 + max((i for i in specials if i < vocab // 2), default=0)
        high = max(low + 1, min((i for i in specials if i >= vocab // 2), default=vocab))
        rows = []
        for count in (length - 2, min(3, length - 2)):
            tokens = torch.randint(low, high, (count + (bos is None),), generator=generator).tolist()
            row = ([bos] if bos is not None else []) + tokens + [eos]
            rows.append(row + [pad] * (length - len(row)))
        input_ids = torch.tensor(rows, dtype=torch.long)
    return pixel_values, input_ids


def _compare(ours: dict, reference: dict) -> tuple[dict, float]:
    differences, scale = {}, 0.0
    for name, expected in reference.items():
        actual = ours[name].float()
        if actual.shape != expected.shape:
            shapes = f"{tuple(actual.shape)}, reference {tuple(expected.shape)}"
            raise ConversionError(f"verification: {name} has shape {shapes}")
        differences[name] = float((actual - expected.float()).abs().max())
        scale = max(scale, float(expected.float().abs().max()))
    return differences, scale


def _result(reference: str, ours: dict, expected: dict, dtype: torch.dtype) -> Verification:
    differences, scale = _compare(ours, expected)
    return Verification(reference, differences, scale, TOLERANCES[dtype])


def _dual_outputs(model, pixel_values, input_ids) -> dict:
    with torch.no_grad():
        return {
            "image_embeds": model.get_image_features(pixel_values).pooler_output,
            "text_embeds": model.get_text_features(input_ids).pooler_output,
            "logits_per_image": model(input_ids=input_ids, pixel_values=pixel_values).logits_per_image,
        }


def _load_dualclip(folder):
    from transformers import AutoModel

    return AutoModel.from_pretrained(folder, dtype=torch.float32).eval()


def _unavailable(reference: str, package: str, error: Exception) -> Verification:
    return Verification(reference, unavailable=f"the `{package}` package cannot be imported here ({error})")


def verify_openai(state_dict: dict, folder, dtype: torch.dtype) -> Verification:
    """Compares the converted folder with `clip.model.build_model(state_dict)` (run in float32)."""
    reference_name = "OpenAI CLIP (clip.model.build_model)"
    if "positional_embedding_res" in state_dict:
        return Verification("Long-CLIP", unavailable="Long-CLIP's own code is not an installable package")
    try:
        from clip.model import build_model
    except ImportError as error:
        return _unavailable(reference_name, "clip", error)
    # build_model casts to float16 as released; reload the weights into the float32 model for an exact reference.
    reference = build_model(dict(state_dict)).float()
    reference.load_state_dict(state_dict)
    ours = _load_dualclip(folder)
    pixel_values, input_ids = verification_inputs(ours.config.text_config, ours.config.vision_config)
    with torch.no_grad():
        logits_per_image, _ = reference(pixel_values, input_ids)
        expected = {
            "image_embeds": reference.encode_image(pixel_values),
            "text_embeds": reference.encode_text(input_ids),
            "logits_per_image": logits_per_image,
        }
    return _result(reference_name, _dual_outputs(ours, pixel_values, input_ids), expected, dtype)


def verify_openclip(checkpoint_path, model_cfg: dict, folder, dtype: torch.dtype, hf_text_config=None) -> Verification:
    """Compares the converted folder with open_clip's model built from `model_cfg` and loaded from the checkpoint
    (`hf_text_config`: the config dict of its Hugging Face text encoder, for `text_cfg.hf_model_name`)."""
    reference_name = "open_clip"
    try:
        import open_clip
        from open_clip.model import CLIP, CustomTextCLIP
    except ImportError as error:
        return _unavailable(reference_name, "open_clip", error)
    reference_name = f"open_clip {getattr(open_clip, '__version__', '')}".strip()
    cfg = copy.deepcopy(model_cfg)
    encoder_folder = _local_hf_text_config(cfg, hf_text_config)  # noqa: F841  (kept until open_clip has read it)
    # open_clip's factory: a Hugging Face text tower makes a CustomTextCLIP.
    model_class = CustomTextCLIP if cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"] else CLIP
    if "multimodal_cfg" in cfg:
        from open_clip.coca_model import CoCa as model_class
    reference = model_class(**cfg).float().eval()
    ours = _load_dualclip(folder)
    if getattr(ours.config.vision_config, "reparameterized", False):
        # A FastViT saved after timm's `reparameterize_model` (fused `reparam_conv`s): the reference is fused alike.
        from timm.utils.model import reparameterize_model

        reparameterize_model(reference.visual.trunk, inplace=True)
    open_clip.load_checkpoint(reference, str(checkpoint_path), weights_only=True)
    pixel_values, input_ids = verification_inputs(ours.config.text_config, ours.config.vision_config)
    with torch.no_grad():
        # normalize=False: CoCa normalises by default, CLIP does not.
        image = reference.encode_image(pixel_values, normalize=False)
        text = reference.encode_text(input_ids, normalize=False)
        logits = reference.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
        if reference.logit_bias is not None:
            logits = logits + reference.logit_bias
    expected = {"image_embeds": image, "text_embeds": text, "logits_per_image": logits}
    return _result(reference_name, _dual_outputs(ours, pixel_values, input_ids), expected, dtype)


def _local_hf_text_config(cfg: dict, hf_text_config: dict | None):
    """open_clip reads a Hugging Face text tower's config by name from the hub: points `cfg` at a local copy of
    `hf_text_config` instead (random weights, loaded from the checkpoint after). Returns the temporary folder, which
    lives as long as the caller keeps it, or `None`."""
    if hf_text_config is None:
        return None
    folder = tempfile.TemporaryDirectory(prefix="dualclip-hf-text-")
    (Path(folder.name) / "config.json").write_text(json.dumps(hf_text_config), encoding="utf-8")
    cfg["text_cfg"] = dict(cfg["text_cfg"], hf_model_name=folder.name, hf_model_pretrained=False)
    return folder


def _all_outputs(model, inputs: dict) -> dict:
    """Every tensor a forward pass returns, nested outputs flattened to dotted names."""
    with torch.no_grad():
        outputs = model.float().eval()(**inputs, return_dict=True)
    flat = {}
    for name, value in outputs.items():
        if torch.is_tensor(value):
            flat[name] = value
        elif hasattr(value, "items"):
            flat.update({f"{name}.{k}": v for k, v in value.items() if torch.is_tensor(v)})
    return flat


def _tower_configs(config) -> tuple:
    """`(text_config, vision_config)` of a dualclip config; `None` for a tower it does not have."""
    if hasattr(config, "text_config"):
        return config.text_config, config.vision_config
    if config.model_type.endswith("text_model"):
        return config, None
    return None, config


def verify_transformers_pair(ours, reference, reference_name: str, dtype: torch.dtype) -> Verification:
    """Compares every output of two models with the same forward signature and output fields (a dualclip class and
    its transformers CLIP counterpart) on the same inputs."""
    dual = ours if type(ours).__name__.startswith("DualClip") else reference
    pixel_values, input_ids = verification_inputs(*_tower_configs(dual.config))
    inputs = {k: v for k, v in (("input_ids", input_ids), ("pixel_values", pixel_values)) if v is not None}
    expected = _all_outputs(reference, inputs)
    actual = _all_outputs(ours, inputs)
    return _result(reference_name, {k: actual[k] for k in expected}, expected, dtype)

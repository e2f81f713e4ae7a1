"""OpenCLIP models whose image tower timm builds (`vision_cfg.timm_model_name`): the family that converts each.

Each family reads the timm architecture from a table of its own (timm is not imported at conversion time), checks
OpenCLIP's model config against the tensor shapes, and renames the tensors into its dualclip layout.
"""

import torch

from ..configuration_dualclip import DualClipConfig
from .building import convert_tensors
from .clip_layout import plan_conversion
from .convnext import CONVNEXT_ARCHITECTURES, convnext_vision_tower
from .errors import ConversionError
from .eva import EVA_ARCHITECTURES, eva_vision_tower
from .fastvit import FASTVIT_ARCHITECTURES, MOBILECLIP_VIT_ARCHITECTURES, fastvit_vision_tower
from .openclip import CARRIED_TOKENIZER_OPTIONS, TIMM_VISION_OPTIONS, check_openclip_options, openclip_text_tower
from .siglip import SIGLIP_VISION_ARCHITECTURES, openclip_siglip_to_siglip_state_dict, siglip_config
from .vitamin import VITAMIN_ARCHITECTURES, vitamin_vision_tower


def timm_model_name(model_cfg: dict) -> str | None:
    """The timm image tower an OpenCLIP model config names, or `None` for OpenCLIP's own towers."""
    vision = model_cfg.get("vision_cfg") if isinstance(model_cfg, dict) else None
    return (vision or {}).get("timm_model_name") or None


def convert_timm_tower_model(model_cfg: dict, source) -> tuple[DualClipConfig, dict[str, torch.Tensor], str]:
    """`(config, tensors, family)` for an OpenCLIP model with a timm image tower; `source` (a `TensorSource`) is
    emptied. Raises `ConversionError` naming a timm tower no family converts."""
    name = timm_model_name(model_cfg)
    if name in SIGLIP_VISION_ARCHITECTURES:
        try:
            config = siglip_config(model_cfg, source)
        except KeyError as missing:
            raise ConversionError(f"not an OpenCLIP SigLIP state dict: no tensor {missing}") from None
        state = {key: source.pop(key) for key in source.keys()}
        return config, openclip_siglip_to_siglip_state_dict(state), "SigLIP"
    if name in EVA_ARCHITECTURES:
        try:
            return (*_openclip_text_timm_image(model_cfg, source, eva_vision_tower), "EVA/PE")
        except KeyError as missing:
            raise ConversionError(f"not an OpenCLIP EVA/PE state dict: no tensor {missing}") from None
    if name in CONVNEXT_ARCHITECTURES:
        try:
            return (*_openclip_text_timm_image(model_cfg, source, convnext_vision_tower), "ConvNeXt")
        except KeyError as missing:
            raise ConversionError(f"not an OpenCLIP ConvNeXt state dict: no tensor {missing}") from None
    if name in VITAMIN_ARCHITECTURES:
        try:
            return (*_openclip_text_timm_image(model_cfg, source, vitamin_vision_tower), "ViTamin")
        except KeyError as missing:
            raise ConversionError(f"not an OpenCLIP ViTamin state dict: no tensor {missing}") from None
    if name in FASTVIT_ARCHITECTURES or name in MOBILECLIP_VIT_ARCHITECTURES:
        try:
            return (*_openclip_text_timm_image(model_cfg, source, fastvit_vision_tower), "MobileCLIP")
        except KeyError as missing:
            raise ConversionError(f"not an OpenCLIP MobileCLIP state dict: no tensor {missing}") from None
    raise ConversionError(
        f"unsupported OpenCLIP option vision_cfg.timm_model_name={name!r}: dualclip converts timm's SigLIP, EVA, "
        "PE, ConvNeXt and ViTamin towers (vit_*_siglip_*, eva*, vit_pe_core_*, convnext_*, vitamin_*; see "
        "dualclip.conversion.siglip.SIGLIP_VISION_ARCHITECTURES, dualclip.conversion.eva.EVA_ARCHITECTURES, "
        "dualclip.conversion.convnext.CONVNEXT_ARCHITECTURES and dualclip.conversion.vitamin.VITAMIN_ARCHITECTURES)"
    )


def _openclip_text_timm_image(model_cfg: dict, source, vision_tower) -> tuple[DualClipConfig, dict[str, torch.Tensor]]:
    """A timm image tower (`vision_tower(vision_cfg, embed_dim, tensors)` -> `(config, tensors)`, a family's
    conversion: EVA/PE, ConvNeXt) beside OpenCLIP's own text tower (CLIP's)."""
    check_openclip_options(model_cfg, TIMM_VISION_OPTIONS, CARRIED_TOKENIZER_OPTIONS)
    text_keys = [key for key in source.keys() if not key.startswith("visual.") and key not in _HEAD_KEYS]
    text_config, facts = openclip_text_tower(model_cfg, _Subset(source, text_keys))
    vision_config, tensors = vision_tower(
        model_cfg["vision_cfg"], model_cfg["embed_dim"],
        {key: source.pop(key) for key in source.keys() if key.startswith("visual.")},
    )
    tensors.update(convert_tensors(source, plan_conversion(source.keys(), facts), torch.float32))
    logit_bias = model_cfg.get("init_logit_bias")
    try:
        config = DualClipConfig(
            text_config=text_config, vision_config=vision_config, projection_dim=model_cfg["embed_dim"],
            logit_bias_init_value=None if logit_bias is None else float(logit_bias),
            loss_type="infonce" if logit_bias is None else "sigmoid",
        )
    except ValueError as error:
        raise ConversionError(f"the checkpoint's architecture is not a valid dualclip model: {error}") from None
    return config, tensors


_HEAD_KEYS = ("logit_scale", "logit_bias")


class _Subset:
    """The shape view of some of a source's tensors (what `shape_facts` reads)."""

    def __init__(self, source, keys):
        self._source, self._keys = source, keys

    def keys(self):
        return list(self._keys)

    def __contains__(self, name):
        return name in self._keys

    def shape(self, name):
        if name not in self._keys:
            raise KeyError(name)
        return self._source.shape(name)

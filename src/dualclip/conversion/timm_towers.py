"""OpenCLIP models whose image tower timm builds (`vision_cfg.timm_model_name`): the family that converts each.

Each family reads the timm architecture from a table of its own (timm is not imported at conversion time), checks
OpenCLIP's model config against the tensor shapes, and renames the tensors into its dualclip layout.
"""

import torch

from ..configuration_dualclip import DualClipConfig
from .errors import ConversionError
from .siglip import SIGLIP_VISION_ARCHITECTURES, openclip_siglip_to_siglip_state_dict, siglip_config


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
    raise ConversionError(
        f"unsupported OpenCLIP option vision_cfg.timm_model_name={name!r}: dualclip converts timm's SigLIP towers "
        f"({', '.join(sorted(SIGLIP_VISION_ARCHITECTURES))})"
    )

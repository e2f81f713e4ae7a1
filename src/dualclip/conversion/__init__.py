"""Converters from OpenAI CLIP, OpenCLIP and transformers CLIP checkpoints to dualclip folders, and from dualclip
back to transformers CLIP.

```python
from dualclip.conversion import convert_checkpoint

convert_checkpoint("ViT-B-32.pt", "clip-vit-b-32", verify=True)          # OpenAI archive, detected
convert_checkpoint("epoch_32.pt", "my-model", openclip_model="ViT-B-32")  # OpenCLIP training checkpoint
```

Reading is safe (nothing stored in a checkpoint is executed) and writing atomic (OUT appears complete or not at all);
every failure is a `ConversionError` (a `ValueError`), `FileNotFoundError` or `FileExistsError`.
"""

from .building import DTYPES
from .converters import (
    SOURCES,
    convert_checkpoint,
    convert_hf_clip,
    convert_openai_checkpoint,
    convert_openclip_checkpoint,
    detect_source,
)
from .errors import ConversionError
from .export import export_to_hf_clip
from .hf import clip_config_from_dualclip
from .openai import OPENAI_ARCHITECTURES, openai_config
from .openclip import openclip_config
from .pipeline import DEFAULT_MAX_SHARD_SIZE, ConversionResult
from .reading import Checkpoint, read_checkpoint
from .verify import Verification

__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "DTYPES",
    "OPENAI_ARCHITECTURES",
    "SOURCES",
    "Checkpoint",
    "ConversionError",
    "ConversionResult",
    "Verification",
    "clip_config_from_dualclip",
    "convert_checkpoint",
    "convert_hf_clip",
    "convert_openai_checkpoint",
    "convert_openclip_checkpoint",
    "detect_source",
    "export_to_hf_clip",
    "openai_config",
    "openclip_config",
    "read_checkpoint",
]

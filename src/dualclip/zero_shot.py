"""Zero-shot classification and embedding with a saved dualclip model folder (used by `dualclip classify/embed/demo`).

```python
from dualclip.zero_shot import load_model_and_processor, classify
model, processor = load_model_and_processor(folder)
probs = classify(model, processor, images, ["cat", "dog"], template="a photo of a {}.")  # (n_images, n_labels)
```
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["load_model_and_processor", "load_processor", "classify", "embed_images", "embed_texts", "format_labels"]


def _check_folder(folder) -> str:
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    return folder


def load_processor(folder):
    """The `DualClipProcessor` saved in `folder`: its image processor settings and its tokenizer.

    A folder with a saved `DualClipProcessor` (`processor_config.json`) gives that processor, with whatever tokenizer
    it saved. Otherwise (a transformers CLIP folder) reads `preprocessor_config.json` and the tokenizer files
    (`tokenizer.json`, or `vocab.json` + `merges.txt`) into `DualClipImageProcessor` and `DualClipTokenizer`:
    OpenAI's exact tokenizer rather than `CLIPTokenizer`.
    """
    from .image_processing_dualclip import DualClipImageProcessor
    from .processing_dualclip import DualClipProcessor
    from .tokenization_dualclip import DualClipTokenizer

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    if os.path.isfile(os.path.join(folder, "processor_config.json")):
        # A saved DualClipProcessor: its tokenizer (any class, e.g. one carried from an OpenCLIP SigLIP folder) and
        # its text defaults.
        return DualClipProcessor.from_pretrained(folder)
    return DualClipProcessor(DualClipImageProcessor.from_pretrained(folder), DualClipTokenizer.from_pretrained(folder))


def load_model_and_processor(folder, dtype: torch.dtype = torch.float32):
    """Loads a `DualClipModel` (in `dtype`, eval mode) and its processor from a local folder; never downloads."""
    from .modeling_dualclip import DualClipModel

    folder = _check_folder(folder)
    model = DualClipModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model.eval(), load_processor(folder)


def format_labels(labels: Sequence[str], template: str) -> list[str]:
    """`template` with each label put in place of its `{}` (exactly one `{}` required)."""
    if not labels:
        raise ValueError("labels is empty: give at least one label")
    if template.count("{}") != 1:
        raise ValueError(f"template must contain exactly one '{{}}' where the label goes, got {template!r}")
    return [template.replace("{}", str(label)) for label in labels]


@torch.no_grad()
def embed_texts(model, processor, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings, float32 `(len(texts), projection_dim)`."""
    if not texts:
        raise ValueError("texts is empty: give at least one text")
    parts = []
    for start in range(0, len(texts), batch_size):
        tokens = processor(
            text=list(texts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt"
        )
        features = model.encode_text(tokens["input_ids"], attention_mask=tokens["attention_mask"])
        parts.append(torch.nn.functional.normalize(features.float(), dim=-1))
    return torch.cat(parts)


@torch.no_grad()
def embed_images(model, processor, images: Sequence, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised image embeddings, float32 `(len(images), projection_dim)`; images as the processor takes them."""
    if len(images) == 0:
        raise ValueError("images is empty: give at least one image")
    dtype = next(model.parameters()).dtype
    parts = []
    for start in range(0, len(images), batch_size):
        pixels = processor(images=list(images[start : start + batch_size]), return_tensors="pt")["pixel_values"]
        features = model.encode_image(pixels.to(dtype))
        parts.append(torch.nn.functional.normalize(features.float(), dim=-1))
    return torch.cat(parts)


@torch.no_grad()
def classify(model, processor, images: Sequence, labels: Sequence[str], template: str = "{}") -> np.ndarray:
    """Zero-shot probabilities `(len(images), len(labels))`: softmax over labels of the model's image-text logits.

    Each label becomes a caption: `template` with the label in place of its `{}`. A row's probabilities sum to 1;
    a model with a logit bias (SigLIP) still gets a softmax here, which ranks the labels the same way.
    """
    text = embed_texts(model, processor, format_labels(labels, template))
    image = embed_images(model, processor, images)
    logits = image @ text.T * _logit_scale(model)
    return torch.softmax(logits, dim=-1).numpy()


def _logit_scale(model) -> float:
    """`exp(logit_scale)`, unclamped; read through accelerate when `device_map` offloaded it (a meta tensor)."""
    if model.logit_scale.device.type != "meta":
        return model.logit_scale.detach().float().exp().item()
    from accelerate.utils import align_module_device

    with align_module_device(model, torch.device("cpu")):
        return model.logit_scale.detach().float().exp().item()

"""The model side of a job: loading (any folder or hub id, default the embedded tiny model), device and dtype, the
pooled fast path for features, and what identifies the model in a manifest."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field

import torch

__all__ = ["JobModel", "load_job_model", "image_features", "text_features", "pick_device", "warn_if_not_digits"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image features `(batch, dim)` through the model's fast pooled path."""
    return model.encode_image(pixel_values)


def text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Projected text features `(batch, dim)` through the model's fast pooled path."""
    return model.encode_text(input_ids, attention_mask=attention_mask)


def normalized(features: torch.Tensor) -> torch.Tensor:
    """Unit rows in float32 (the norm of float16 features is taken in float32: their sum of squares can overflow)."""
    return torch.nn.functional.normalize(features.float(), dim=-1)


def pick_device(device: str | None = None) -> torch.device:
    """`device`, else this process's GPU (`LOCAL_RANK` under accelerate/torchrun), else the CPU."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU that has it, float16 on other GPUs, float32 on the CPU."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass
class JobModel:
    name: str
    model: torch.nn.Module
    processor: object
    device: torch.device
    dtype: torch.dtype
    is_tiny: bool
    identity: dict = field(default_factory=dict)
    warned: bool = False

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def preprocessing(self) -> dict:
        """The image processor and tokenizer settings that change the numbers (recorded in manifests)."""
        settings = self.processor.image_processor.to_dict()
        settings = {key: value for key, value in settings.items() if not key.startswith("_")}
        tokenizer = self.processor.tokenizer
        settings["tokenizer"] = {"class": type(tokenizer).__name__, "max_length": tokenizer.model_max_length,
                                 "pad_token": tokenizer.pad_token}
        return json.loads(json.dumps(settings, default=str, sort_keys=True))


def _config_sha256(config) -> str:
    data = config.to_dict()
    for key in ("transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures", "auto_map"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _weights_fingerprint(folder: str) -> str | None:
    """Size and the first and last 64 KiB of each weights file: cheap, and different for different checkpoints of
    one architecture (a fine-tune changes the tensor bytes at the end of the file)."""
    if not os.path.isdir(folder):
        return None
    digest = hashlib.sha256()
    names = sorted(name for name in os.listdir(folder) if name.endswith((".safetensors", ".bin", ".pt", ".pth")))
    for name in names:
        path = os.path.join(folder, name)
        size = os.path.getsize(path)
        digest.update(f"{name}:{size}".encode())
        with open(path, "rb") as file:
            digest.update(file.read(65536))
            file.seek(max(0, size - 65536))
            digest.update(file.read(65536))
    return digest.hexdigest()


def _load_processor(name: str, model_type: str):
    if model_type == "clip" and os.path.isdir(name):
        # A transformers CLIP folder: its settings with OpenAI's exact tokenizer (dualclip's), not CLIPTokenizer.
        from ..zero_shot import load_processor

        return load_processor(name)
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(name)  # what the folder saved (dualclip, SigLIP-style tokenizers, ...)


def load_job_model(name: str | None = None, device: str | None = None, dtype: str = "auto") -> JobModel:
    """Loads a model and its processor for a job (eval mode, no gradients). `name`: a local folder or a hub id
    (from the local HF cache); None: the embedded tiny-digits model."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging

    from ..modeling_dualclip import DualClipModel
    from ..tiny_model import TINY_MODEL_PATH

    name = TINY_MODEL_PATH if name is None else os.fspath(name)
    if os.path.exists(name) and not os.path.isfile(os.path.join(name, "config.json")):
        raise FileNotFoundError(f"model folder {name} has no config.json")
    logging.disable_progress_bar()
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    config = AutoConfig.from_pretrained(name)
    if config.model_type == "dualclip":
        model = AutoModel.from_pretrained(name, dtype=torch_dtype)
    else:  # a transformers CLIP folder: the dualclip class reads it (same layout) and has the fast pooled API
        model = DualClipModel.from_pretrained(name, dtype=torch_dtype)
    if not hasattr(model, "encode_image") or not hasattr(model, "encode_text"):
        raise ValueError(f"{name} loads as {type(model).__name__}, which has no image and text towers")
    model = model.to(torch_device).eval().requires_grad_(False)
    is_tiny = os.path.isdir(name) and os.path.samefile(name, TINY_MODEL_PATH)
    identity = {
        "name": name if is_tiny or not os.path.exists(name) else os.path.abspath(name),
        "class": type(model).__name__,
        "config_sha256": _config_sha256(model.config),
        "weights_fingerprint": _weights_fingerprint(name),
        "projection_dim": int(model.config.projection_dim),
    }
    if is_tiny:
        identity["name"] = "embedded tiny-digits model"
    return JobModel(name, model, _load_processor(name, config.model_type), torch_device, torch_dtype, is_tiny,
                    identity)


def warn_if_not_digits(job_model: JobModel, image_size: tuple[int, int] | None) -> None:
    """Once per job: the embedded model only knows 8x8 handwritten digits; say so when the data is not that."""
    if not job_model.is_tiny or image_size is None or tuple(image_size) == (8, 8) or job_model.warned:
        return
    job_model.warned = True
    width, height = image_size
    print(
        f"warning: the embedded tiny model was trained only on 8x8 handwritten digits, and these images are "
        f"{width}x{height}; its results on them mean little. Pass --model with a real CLIP model folder or hub id.",
        file=sys.stderr,
    )

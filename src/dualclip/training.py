"""Training a dualclip model with the transformers `Trainer`: a collator for (image, caption) pairs and LiT freezing.

```python
from transformers import Trainer, TrainingArguments
from dualclip.training import DualClipDataCollator, freeze_tower

collator = DualClipDataCollator(processor)          # a DualClipProcessor
freeze_tower(model, "vision")                       # optional: LiT, train the text side only
args = TrainingArguments("out", remove_unused_columns=False, per_device_train_batch_size=256)
Trainer(model=model, args=args, train_dataset=pairs, data_collator=collator).train()
```

The collator puts `return_loss=True` in every batch, so `DualClipModel` returns its contrastive loss and the
`Trainer` (which finds no `labels`) trains on `outputs.loss`, in training and in evaluation alike. Under
`accelerate launch`/`torchrun` the loss scores each process's rows against the features of every process
(`config.loss_gather_features`, see `dualclip.losses`), so N processes train exactly as one process on the
global batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["DualClipDataCollator", "freeze_tower", "TOWERS"]

#: Tower names accepted by `freeze_tower`, each with the submodules that make it up (tower, then its projection).
TOWERS = {"vision": ("vision_model", "visual_projection"), "text": ("text_model", "text_projection")}


@dataclass
class DualClipDataCollator:
    """Turns (image, caption) pairs into a `DualClipModel` training batch.

    Called with a list of examples, as the `Trainer`'s `data_collator`. Each example is either a mapping with the
    image under `image_key` and the caption under one of `text_keys` (`{"image": img, "caption": "a dog"}`), or an
    `(image, caption)` pair. An image is anything the processor's image processor accepts (PIL image, array,
    tensor, local file path); a caption is one string. Returns `input_ids`, `attention_mask` (captions padded to
    the longest and truncated to `max_length`), `pixel_values` and `return_loss=True`.

    **With the `Trainer`, mapping examples need `TrainingArguments(remove_unused_columns=False)`.** By default the
    `Trainer` strips every key that `DualClipModel.forward` does not take (`image` and `caption` included) before
    the collator runs; the collator then raises a `ValueError` saying so. `(image, caption)` tuples are not
    filtered and work with either setting.

    Args:
        processor: a [`DualClipProcessor`] (or any processor taking `text=`, `images=`, `padding=`, `truncation=`,
            `max_length=`, `return_tensors=`).
        image_key (`str`, defaults to `"image"`): key of the image in mapping examples.
        text_keys (`tuple[str, ...]`, defaults to `("caption", "text")`): keys tried, in order, for the caption.
        max_length (`int`, *optional*): captions are truncated to this many tokens (EOS kept last); defaults to the
            tokenizer's `model_max_length` (77 for CLIP).
        skip_bad_images (`bool`, defaults to `True`): an image file (path or bytes) or lazily opened PIL image that
            cannot be decoded (missing, empty, truncated, not an image) is left out of the batch with a warning and
            counted in `skipped_images`, as OpenCLIP's data pipeline does, instead of ending the run. A batch
            whose images are all unreadable raises `ValueError`. With DataLoader workers each worker process counts
            its own. `False`: the processor's error ends the run.

    Attributes:
        skipped_images (`int`): images skipped so far by this collator (in this process).
    """

    processor: Any
    image_key: str = "image"
    text_keys: tuple[str, ...] = ("caption", "text")
    max_length: int | None = None
    skip_bad_images: bool = True
    skipped_images: int = field(default=0, init=False)

    def __call__(self, examples: Sequence[Mapping | tuple]) -> dict:
        images, captions = self._split(examples)
        if self.skip_bad_images:
            images, captions = self._drop_unreadable(images, captions)
        batch = self.processor(
            text=captions,
            images=images,
            padding="longest",
            truncation=True,
            max_length=self.max_length or getattr(self.processor.tokenizer, "model_max_length", None),
            return_tensors="pt",
        )
        if batch["pixel_values"].shape[0] != batch["input_ids"].shape[0]:
            raise ValueError(
                f"the processor made {batch['pixel_values'].shape[0]} images (pixel_values) from {len(images)} "
                f"examples with {batch['input_ids'].shape[0]} captions (input_ids); every example must hold one image"
            )
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "pixel_values": batch["pixel_values"],
            "return_loss": True,
        }

    def _drop_unreadable(self, images: list, captions: list[str]) -> tuple[list, list[str]]:
        import PIL.Image

        from .jobs.decoding import load_image

        kept_images, kept_captions, reasons = [], [], []
        for image, caption in zip(images, captions):
            if isinstance(image, (str, os.PathLike, bytes, bytearray, PIL.Image.Image)):
                decoded, reason = load_image(image)
                if reason is not None:
                    self.skipped_images += 1
                    name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__
                    logger.warning(f"skipped an unreadable training image ({reason}): {name}; "
                                   f"{self.skipped_images} skipped so far")
                    reasons.append(f"{name}: {reason}")
                    continue
                if not isinstance(image, PIL.Image.Image):  # a PIL image given is kept as given, now decoded
                    image = decoded
            kept_images.append(image)
            kept_captions.append(caption)
        if not kept_images:
            raise ValueError(f"every image of this batch is unreadable: {'; '.join(reasons)}")
        return kept_images, kept_captions

    def _split(self, examples) -> tuple[list, list[str]]:
        if isinstance(examples, Mapping):
            raise ValueError(
                "examples must be a list of examples (one {'image': ..., 'caption': ...} mapping or (image, caption) "
                f"pair per image), got a mapping with keys {sorted(examples)}"
            )
        if examples is None or len(examples) == 0:
            raise ValueError("examples is an empty batch: the collator needs at least one (image, caption) example")
        images, captions = [], []
        for index, example in enumerate(examples):
            image, caption = self._unpack(example, index)
            if image is None:
                raise ValueError(f"examples[{index}] has no image (got None)")
            if isinstance(image, (list, tuple)) or getattr(image, "ndim", 3) > 3:
                count = len(image) if isinstance(image, (list, tuple)) else image.shape[0]
                raise ValueError(
                    f"examples[{index}] has {count} images for one caption: the collator pairs exactly one image "
                    "with each caption"
                )
            if not isinstance(caption, str):
                count = f"{len(caption)} captions" if isinstance(caption, (list, tuple)) else type(caption).__name__
                raise ValueError(
                    f"examples[{index}] has {count} for one image: the collator pairs exactly one caption (a string) "
                    "with each image; pick one caption per image in the dataset (e.g. at random for COCO-style data)"
                )
            images.append(image)
            captions.append(caption)
        return images, captions

    def _unpack(self, example, index: int):
        if isinstance(example, Mapping):
            if self.image_key not in example:
                hint = ""
                if not example or set(example) <= {"input_ids", "attention_mask", "pixel_values", "return_loss"}:
                    hint = (
                        "; the transformers Trainer removes dataset keys that the model's forward does not take: "
                        "set TrainingArguments(remove_unused_columns=False), or give (image, caption) tuples"
                    )
                raise ValueError(f"examples[{index}] has no {self.image_key!r} key (keys: {sorted(example)}){hint}")
            text_key = next((key for key in self.text_keys if key in example), None)
            if text_key is None:
                raise ValueError(
                    f"examples[{index}] has no caption: expected one of the keys {list(self.text_keys)}, "
                    f"got {sorted(example)}"
                )
            return example[self.image_key], example[text_key]
        if isinstance(example, (tuple, list)):
            if len(example) != 2:
                raise ValueError(
                    f"examples[{index}] must be an (image, caption) pair, got a {type(example).__name__} of "
                    f"{len(example)} items"
                )
            return example[0], example[1]
        raise ValueError(
            f"examples[{index}] must be a mapping with {self.image_key!r} and a caption key, or an (image, caption) "
            f"pair; got {type(example).__name__}"
        )


def freeze_tower(model: nn.Module, tower: str, frozen: bool = True) -> int:
    """Freezes (or, with `frozen=False`, unfreezes) one tower of a `DualClipModel` together with its projection.

    Locking the image tower and training the text side is LiT ("Locked-image Tuning", Zhai et al. 2022):
    `freeze_tower(model, "vision")`. The frozen parameters get `requires_grad=False`, so the `Trainer`'s optimizer
    leaves them out, and the frozen tower stays in eval mode even when `model.train()` is called: dropout stays off
    and a ResNet tower's BatchNorm statistics stay fixed. `logit_scale` (and `logit_bias`) stay trainable.

    Args:
        model: a `DualClipModel` (anything with `vision_model`/`visual_projection` and `text_model`/`text_projection`).
        tower (`str`): `"vision"` or `"text"`.
        frozen (`bool`, defaults to `True`): `False` makes the tower trainable again.

    Returns:
        The number of parameters (elements) frozen or unfrozen.
    """
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {', '.join(map(repr, TOWERS))}; got {tower!r}")
    modules = []
    for name in TOWERS[tower]:
        module = getattr(model, name, None)
        if not isinstance(module, nn.Module):
            raise ValueError(
                f"model ({type(model).__name__}) has no {name!r} submodule; freeze_tower needs a DualClipModel"
            )
        modules.append(module)
    count = 0
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(not frozen)
            count += parameter.numel()
        _keep_in_eval_mode(module, frozen)
    return count


def _keep_in_eval_mode(module: nn.Module, keep: bool) -> None:
    # A forward pre-hook rather than a patched `train`: whatever `model.train()` set, the frozen subtree runs in
    # eval mode, and the hook is an ordinary module hook that `unfreeze` removes.
    handle = module.__dict__.pop("_dualclip_eval_hook", None)
    if handle is not None:
        handle.remove()
    if keep:
        module._dualclip_eval_hook = module.register_forward_pre_hook(_switch_to_eval)
        module.eval()


def _switch_to_eval(module: nn.Module, args) -> None:
    if module.training:
        module.eval()

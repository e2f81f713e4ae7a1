"""Train dualclip's embedded tiny model from scratch with the transformers `Trainer` on scikit-learn's digits.

    python examples/train_digits.py                      # writes src/dualclip/assets/tiny-digits/
    python examples/train_digits.py --output-dir /tmp/tiny --epochs 5

Captions are "a handwritten digit {zero, one, ..., nine}". Only images 0-1499 of `sklearn.datasets.load_digits()`
are used for training; images 1500-1796 are never seen and serve as the held-out zero-shot test, whose accuracy the
script measures on the saved folder and writes into the model card. Needs `pip install "dualclip[train]"`
(scikit-learn, accelerate); runs on CPU in a few minutes.
"""

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from dualclip import DualClipConfig, DualClipModel
from dualclip.image_processing_dualclip import DualClipImageProcessor
from dualclip.processing_dualclip import DualClipProcessor
from dualclip.tiny_model import DIGIT_NAMES, DIGIT_TEMPLATE, HELDOUT_FILE, HELDOUT_START, digits_to_uint8
from dualclip.tokenization_dualclip import DualClipTokenizer
from dualclip.training import DualClipDataCollator
from dualclip.zero_shot import classify, load_model_and_processor

DEFAULT_OUTPUT = os.path.join(os.path.dirname(__file__), "..", "src", "dualclip", "assets", "tiny-digits")
IMAGE_SIZE = 32


def tiny_config() -> DualClipConfig:
    """Small towers; the text tower keeps OpenAI's full 49,408-token vocabulary (the tokenizer is the original),
    so its width is what sets the size on disk: 49,408 x 32 x 2 bytes (float16) = 3.2 MB."""
    return DualClipConfig(
        text_config=dict(
            hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, pad_token_id=0,
            projection_dim=32,
        ),
        vision_config=dict(
            hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=4, projection_dim=32,
        ),
        projection_dim=32,
    )


def tiny_processor() -> DualClipProcessor:
    """The original CLIP tokenizer and an image processor that upscales the 8x8 digits to 32x32 (bicubic)."""
    image_processor = DualClipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False, crop_size=IMAGE_SIZE
    )
    return DualClipProcessor(image_processor, DualClipTokenizer())


def caption(label: int) -> str:
    return DIGIT_TEMPLATE.format(DIGIT_NAMES[label])


class DigitPairs(Dataset):
    """(image, caption) pairs of digits; with `augment`, each image is shifted by up to one pixel in each direction,
    in quarter-pixel steps (bicubic, zero fill): cheap, and it makes the model robust to unseen writers."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool = True, seed: int = 0):
        self.images, self.labels, self.augment = images, labels, augment
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        if self.augment:
            dx, dy = self.rng.integers(-4, 5, size=2) / 4
            moved = PIL.Image.fromarray(image).transform(
                image.shape[::-1], PIL.Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy),
                resample=PIL.Image.Resampling.BICUBIC, fillcolor=0,
            )
            image = np.asarray(moved)
        return {"image": image, "caption": caption(int(self.labels[index]))}


def heldout_accuracy(folder: str, images: np.ndarray, labels: np.ndarray) -> float:
    """Zero-shot accuracy of the saved model in `folder`, with the training template and the ten digit names."""
    model, processor = load_model_and_processor(folder)
    probs = classify(model, processor, list(images), DIGIT_NAMES, template=DIGIT_TEMPLATE)
    return float((probs.argmax(axis=1) == labels).mean())


MODEL_CARD = """\
---
license: apache-2.0
library_name: transformers
tags: [dualclip, clip, zero-shot-image-classification, tiny]
---
# dualclip tiny-digits

The default model embedded in the `dualclip` package (`dualclip.TINY_MODEL_PATH`): a {size_mb:.1f} MB CLIP-style
model trained from scratch on scikit-learn's 8x8 handwritten digits. It is a working example and a test fixture,
not a general image model: it knows the ten captions `"a handwritten digit zero"` ... `"a handwritten digit nine"`
and images that look like the digits dataset (white ink on black, upscaled from 8x8).

## Held-out zero-shot accuracy

**{accuracy:.4f}** ({correct} of {count}) on digits images {start}-{end} with the template
`"{template}"` and the labels zero ... nine. Those images were never seen in training (they ship here as
`heldout_digits.npz`, uint8 `(N, 8, 8)` with their labels). `dualclip demo` shows predictions on them, and the
package's tests recompute this accuracy from the shipped weights.

## Training

`python examples/train_digits.py` (dualclip's repository): `transformers.Trainer` with `DualClipDataCollator`,
InfoNCE loss, {epochs} epochs over images 0-{last_train} in shuffled batches of 32, AdamW (lr {lr}, cosine
schedule), random shifts of up to one pixel; seed {seed}. It took {minutes:.1f} minutes on CPU ({threads} threads).

| | |
|---|---|
| text tower | {text_layers} layers, width {text_width}, OpenAI CLIP's tokenizer and full 49,408-token vocabulary |
| image tower | ViT, {vision_layers} layers, width {vision_width}, {image_size}x{image_size} input, patch {patch} |
| embedding | {projection} dimensions |
| weights | float16 on disk (`model.safetensors`); `config.json` says float32, so it loads in float32 |

## Data and licences

Training and held-out images: scikit-learn's copy of the UCI "Optical Recognition of Handwritten Digits" data set
(Alpaydin and Kaynak, 1998; CC BY 4.0). Tokenizer vocabulary: OpenAI CLIP's BPE vocabulary (MIT licence). The
weights are released with the dualclip package, under Apache-2.0.
"""


def write_model_card(folder: str, **facts) -> None:
    with open(os.path.join(folder, "README.md"), "w") as file:
        file.write(MODEL_CARD.format(**facts))


def folder_size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def _drop_auto_map(value):
    if isinstance(value, dict):
        return {key: _drop_auto_map(item) for key, item in value.items() if key != "auto_map"}
    return value


def save_folder(model: DualClipModel, processor: DualClipProcessor, folder: str) -> None:
    """Writes the model in float16 with its processor. The remote-code copies and their `auto_map` entries are
    dropped: the folder lives inside the package, which is the code."""
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    model.to(torch.float16).save_pretrained(folder)
    processor.save_pretrained(folder)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.endswith(".py"):
            os.remove(path)
        elif name.endswith(".json") and name != "tokenizer.json":
            with open(path) as file:
                settings = _drop_auto_map(json.load(file))
            if name == "config.json":
                # Stored in float16 to halve the size; loaded (dtype="auto") in float32, which CPUs run well.
                settings["dtype"] = "float32"
            with open(path, "w") as file:
                json.dump(settings, file, indent=2, sort_keys=True)
                file.write("\n")
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o644)  # safetensors are written owner-only; the package is for all


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT, help="where the model folder is written")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits_to_uint8(digits.images)
    labels = digits.target.astype(np.int64)
    train_images, train_labels = images[:HELDOUT_START], labels[:HELDOUT_START]
    heldout_images, heldout_labels = images[HELDOUT_START:], labels[HELDOUT_START:]

    torch.manual_seed(args.seed)
    processor = tiny_processor()
    model = DualClipModel(tiny_config())
    dataset = DigitPairs(train_images, train_labels, seed=args.seed)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=32,
            num_train_epochs=args.epochs,
            learning_rate=args.learning_rate,
            weight_decay=0.05,
            optim="adamw_torch_fused",
            lr_scheduler_type="cosine",
            warmup_steps=0.05,  # a fraction of the steps
            logging_steps=200,
            save_strategy="no",
            report_to="none",
            remove_unused_columns=False,  # the collator needs the `image` and `caption` keys
            use_cpu=True,
            seed=args.seed,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model, args=training_args, train_dataset=dataset, data_collator=DualClipDataCollator(processor)
        )
        trainer.train()
    minutes = (time.perf_counter() - start) / 60

    folder = os.path.abspath(args.output_dir)
    save_folder(trainer.model, processor, folder)
    np.savez_compressed(os.path.join(folder, HELDOUT_FILE), images=heldout_images, labels=heldout_labels)
    accuracy = heldout_accuracy(folder, heldout_images, heldout_labels)
    config = model.config
    write_model_card(
        folder,
        accuracy=accuracy,
        correct=int(round(accuracy * len(heldout_labels))),
        count=len(heldout_labels),
        start=HELDOUT_START,
        end=HELDOUT_START + len(heldout_labels) - 1,
        last_train=HELDOUT_START - 1,
        template=DIGIT_TEMPLATE,
        epochs=args.epochs,
        lr=args.learning_rate,
        seed=args.seed,
        minutes=minutes,
        threads=torch.get_num_threads(),
        text_layers=config.text_config.num_hidden_layers,
        text_width=config.text_config.hidden_size,
        vision_layers=config.vision_config.num_hidden_layers,
        vision_width=config.vision_config.hidden_size,
        image_size=config.vision_config.image_size,
        patch=config.vision_config.patch_size,
        projection=config.projection_dim,
        size_mb=folder_size(folder) / 1e6,
    )
    print(f"trained in {minutes:.1f} min; held-out zero-shot accuracy {accuracy:.4f}; wrote {folder} "
          f"({folder_size(folder) / 1e6:.1f} MB)")
    return accuracy


if __name__ == "__main__":
    main()

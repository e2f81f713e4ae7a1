"""Fine-tune a dualclip model on (image, caption) pairs with the transformers `Trainer`, on one or many processes.

    # one process: the embedded tiny model on scikit-learn's digits (images 0-1499)
    python examples/finetune_trainer.py --output-dir out

    # your data: a JSON-lines file of {"image": "path/to/file.jpg", "caption": "..."} and any model folder
    python examples/finetune_trainer.py --model ./clip-vit-b32 --train-file pairs.jsonl --output-dir out

    # N GPUs (DDP): the contrastive loss uses negatives from all N processes' batches
    accelerate launch --multi_gpu --num_processes 8 examples/finetune_trainer.py --model ./clip-vit-b32 \\
        --train-file pairs.jsonl --output-dir out --per-device-batch-size 128 --gradient-checkpointing

    # 2 CPU processes (gloo), e.g. to try it out on a laptop
    accelerate launch --multi_gpu --num_processes 2 examples/finetune_trainer.py --output-dir out

    # LiT: lock the image tower (and its projection), train the text side
    python examples/finetune_trainer.py --freeze vision --output-dir out

An image that cannot be read (truncated, empty, not an image) is skipped and counted by the collator, and the count
is printed and added to `log_history.json`, so one bad file does not end a run mid-epoch.

`--multi_gpu` is what makes `accelerate launch` start one process per device through torchrun; on a machine without
CUDA the script passes `use_cpu=True` to the `Trainer`, which then joins the processes with gloo
(`torchrun --nproc_per_node 2 examples/finetune_trainer.py ...` works the same). The output folder holds the model
(safetensors), its processor and `log_history.json`.
"""

import argparse
import json
import os

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from dualclip import DualClipModel
from dualclip.tiny_model import DIGIT_NAMES, DIGIT_TEMPLATE, HELDOUT_START, TINY_MODEL_PATH, digits_to_uint8
from dualclip.training import DualClipDataCollator, freeze_tower
from dualclip.zero_shot import load_processor


# transformers 5.x renamed gradient checkpointing to activation checkpointing (the old name warns).
CHECKPOINTING = (
    "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)


class JsonLinesPairs(Dataset):
    """(image path, caption) pairs from a JSON-lines file; relative image paths are read from the file's folder."""

    def __init__(self, path: str):
        folder = os.path.dirname(os.path.abspath(path))
        with open(path) as file:
            rows = [json.loads(line) for line in file if line.strip()]
        self.pairs = [(os.path.join(folder, row["image"]), row["caption"]) for row in rows]

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        image, caption = self.pairs[index]
        return {"image": image, "caption": caption}


class DigitPairs(Dataset):
    """scikit-learn digits 0-1499 (never the held-out 1500-1796) captioned "a handwritten digit {name}"."""

    def __init__(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images = digits_to_uint8(digits.images[:HELDOUT_START])
        self.labels = digits.target[:HELDOUT_START]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"image": self.images[index], "caption": DIGIT_TEMPLATE.format(DIGIT_NAMES[self.labels[index]])}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=TINY_MODEL_PATH, help="model folder to start from (default: tiny-digits)")
    parser.add_argument("--train-file", help="JSON lines of {'image': path, 'caption': text} (default: digits)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--per-device-batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (overrides --epochs)")
    parser.add_argument("--optim", default="adamw_torch", help="a TrainingArguments optimizer name")
    parser.add_argument("--freeze", choices=("vision", "text"), help="lock this tower and its projection (LiT)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-gather", action="store_true", help="score each process's batch on its own")
    parser.add_argument("--no-shuffle", action="store_true", help="read the data in order (reproducible runs)")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> Trainer:
    args = parse_args(argv)
    model = DualClipModel.from_pretrained(args.model, dtype=torch.float32)
    model.config.loss_gather_features = not args.no_gather
    if args.freeze:
        freeze_tower(model, args.freeze)
    processor = load_processor(args.model)
    dataset = JsonLinesPairs(args.train_file) if args.train_file else DigitPairs()

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.per_device_batch_size,
        learning_rate=args.learning_rate,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        optim=args.optim,
        **{CHECKPOINTING: args.gradient_checkpointing},
        train_sampling_strategy="sequential" if args.no_shuffle else "random",
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to="none",
        # The collator reads the `image` and `caption` keys, which the Trainer would otherwise drop.
        remove_unused_columns=False,
        # Without CUDA, this makes the processes of `accelerate launch`/`torchrun` talk over gloo.
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
        disable_tqdm=True,
    )
    # Unreadable images (truncated, empty, not an image) are left out of their batch and counted, not fatal.
    collator = DualClipDataCollator(processor)
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    if collator.skipped_images:
        print(f"skipped {collator.skipped_images} unreadable images (process {training_args.process_index})")
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(args.output_dir)
        with open(os.path.join(args.output_dir, "log_history.json"), "w") as file:
            json.dump(trainer.state.log_history + [{"skipped_images": collator.skipped_images}], file, indent=1)
    return trainer


if __name__ == "__main__":
    main()

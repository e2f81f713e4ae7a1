"""The Trainer collator skips and counts unreadable images instead of ending training."""

import importlib.util
import json
from pathlib import Path

import pytest
from jobs_data import bad_files, caption, write_digit_folder
from transformers import AutoProcessor

import dualclip
from dualclip import DualClipDataCollator

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune_trainer.py"


@pytest.fixture(scope="module")
def processor():
    return AutoProcessor.from_pretrained(dualclip.TINY_MODEL_PATH)


def test_the_collator_skips_and_counts_unreadable_images(processor, tmp_path):
    good = write_digit_folder(tmp_path / "good", 3, class_folders=False)
    bad = sorted(bad_files(tmp_path / "bad"))
    examples = [{"image": path, "caption": caption(label)} for path, label in good]
    examples = [examples[0], {"image": bad[0], "caption": "x"}, examples[1], {"image": bad[1], "caption": "y"},
                (bad[2], "z"), examples[2], (bad[3], "w")]
    collator = DualClipDataCollator(processor)
    batch = collator(examples)
    reference = DualClipDataCollator(processor)([examples[0], examples[2], examples[5]])
    assert collator.skipped_images == 4
    assert batch["pixel_values"].shape[0] == batch["input_ids"].shape[0] == 3
    for name in ("pixel_values", "input_ids", "attention_mask"):
        assert batch[name].equal(reference[name]), name
    with pytest.raises(ValueError, match="every image of this batch is unreadable"):
        collator([{"image": bad[0], "caption": "x"}])
    assert collator.skipped_images == 5
    strict = DualClipDataCollator(processor, skip_bad_images=False)
    with pytest.raises((OSError, ValueError)):
        strict(examples)


def test_training_runs_through_a_truncated_image(tmp_path):
    good = write_digit_folder(tmp_path / "good", 6, class_folders=False)
    truncated = next(path for path in bad_files(tmp_path / "bad") if path.endswith("truncated.jpg"))
    lines = [{"image": path, "caption": caption(label)} for path, label in good]
    lines.insert(2, {"image": truncated, "caption": "a handwritten digit one"})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    spec = importlib.util.spec_from_file_location("finetune_trainer", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--train-file", str(tmp_path / "pairs.jsonl"), "--output-dir", str(tmp_path / "out"),
                  "--per-device-batch-size", "4", "--epochs", "1", "--no-shuffle", "--logging-steps", "1"])
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    assert history[-1] == {"skipped_images": 1}
    assert sum("loss" in entry for entry in history) == 2  # both steps of the epoch ran

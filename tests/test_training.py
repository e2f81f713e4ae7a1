"""Training support: the (image, caption) collator, the Trainer, gradient checkpointing, LiT freezing, device_map,
and a real 2-process `accelerate launch` run checked against one process on the whole batch."""

import copy
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub.errors import StrictDataclassError
import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

from dualclip import DualClipConfig, DualClipModel
from dualclip.image_processing_dualclip import DualClipImageProcessor
from dualclip.processing_dualclip import DualClipProcessor
from dualclip.tiny_model import DIGIT_NAMES, DIGIT_TEMPLATE, digits_to_uint8
from dualclip.tokenization_dualclip import DualClipTokenizer
from dualclip.training import DualClipDataCollator, freeze_tower

REPO = Path(__file__).resolve().parents[1]
# transformers 5.x renamed gradient checkpointing to activation checkpointing (the old names warn).
CHECKPOINTING = (
    "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)
FINETUNE_EXAMPLE = REPO / "examples" / "finetune_trainer.py"


def small_config(**overrides) -> DualClipConfig:
    """OpenAI's vocabulary (the real tokenizer), tiny towers, 16x16 images."""
    return DualClipConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         pad_token_id=0, projection_dim=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=16, patch_size=4, projection_dim=16),
        projection_dim=16,
        **overrides,
    )


@pytest.fixture(scope="module")
def processor():
    return DualClipProcessor(
        DualClipImageProcessor(size={"height": 16, "width": 16}, do_center_crop=False, crop_size=16),
        DualClipTokenizer(),
    )


@pytest.fixture(scope="module")
def digit_pairs():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits_to_uint8(digits.images[:320])
    return [{"image": image, "caption": DIGIT_TEMPLATE.format(DIGIT_NAMES[label])}
            for image, label in zip(images, digits.target[:320])]


def new_model(seed=0, **overrides) -> DualClipModel:
    torch.manual_seed(seed)
    return DualClipModel(small_config(**overrides))


# --- collator ---------------------------------------------------------------------------------------------------------


def test_collator_makes_a_loss_batch(processor, digit_pairs):
    collator = DualClipDataCollator(processor)
    examples = [digit_pairs[0], {"image": digit_pairs[1]["image"], "text": "a much longer caption than the others"},
                (digit_pairs[2]["image"], digit_pairs[2]["caption"])]
    batch = collator(examples)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "return_loss"}
    assert batch["return_loss"] is True
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    assert batch["input_ids"].shape[0] == 3 and batch["input_ids"].shape == batch["attention_mask"].shape
    expected = processor.tokenizer(["a much longer caption than the others"])["input_ids"][0]
    assert batch["input_ids"][1].tolist() == expected  # the longest row sets the padded length
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
    output = new_model()(**batch)
    assert output.loss is not None and torch.isfinite(output.loss)


def test_collator_truncates_to_the_context_keeping_eos(processor, digit_pairs):
    batch = DualClipDataCollator(processor)([(digit_pairs[0]["image"], "word " * 200)])
    assert batch["input_ids"].shape[1] == 77 and batch["input_ids"][0, -1] == processor.tokenizer.eos_token_id


@pytest.mark.parametrize(
    "examples, message",
    [
        ([], "empty batch"),
        ({"image": [1], "caption": ["a"]}, "list of examples"),
        ([{"caption": "a digit"}], "has no 'image' key"),
        ([{"input_ids": [1, 2]}], "remove_unused_columns=False"),
        ([{}], "remove_unused_columns=False"),
        ([{"image": np.zeros((8, 8), np.uint8)}], "has no caption"),
        ([{"image": np.zeros((8, 8), np.uint8), "caption": ["one", "two"]}], "2 captions for one image"),
        ([{"image": [np.zeros((8, 8), np.uint8)] * 2, "caption": "one"}], "2 images for one caption"),
        ([{"image": np.zeros((3, 1, 8, 8), np.uint8), "caption": "one"}], "3 images for one caption"),
        ([{"image": None, "caption": "one"}], "has no image"),
        ([{"image": np.zeros((8, 8), np.uint8), "caption": 3}], "int for one image"),
        ([(np.zeros((8, 8), np.uint8), "a", "b")], r"\(image, caption\) pair"),
        (["just text"], "must be a mapping"),
    ],
)
def test_collator_bad_input(processor, examples, message):
    with pytest.raises(ValueError, match=message):
        DualClipDataCollator(processor)(examples)


def test_collator_error_names_the_example(processor, digit_pairs):
    with pytest.raises(ValueError, match=r"examples\[1\]"):
        DualClipDataCollator(processor)([digit_pairs[0], {"image": digit_pairs[1]["image"]}])


def test_unknown_loss_type_is_a_clear_error(processor, digit_pairs):
    with pytest.raises(StrictDataclassError, match="loss_type"):
        small_config(loss_type="triplet")
    model = new_model()
    with pytest.raises(StrictDataclassError, match="loss_type"):  # strict configs validate on assignment too
        model.config.loss_type = "triplet"


# --- Trainer ----------------------------------------------------------------------------------------------------------


def trainer_args(output_dir, **overrides):

    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=32, learning_rate=1e-3, max_steps=20,
        logging_steps=5, save_strategy="no", report_to="none", remove_unused_columns=False, use_cpu=True,
        disable_tqdm=True, seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def test_trainer_loss_goes_down_and_checkpoint_reloads(tmp_path, digit_pairs):
    """Fine-tunes the tiny model to a caption template it has never seen ("the number 7"), checkpointing activations."""
    from transformers import Trainer

    from dualclip.tiny_model import TINY_MODEL_PATH
    from dualclip.zero_shot import load_processor

    pairs = [{"image": example["image"], "caption": f"the number {DIGIT_NAMES.index(example['caption'].split()[-1])}"}
             for example in digit_pairs]
    model = DualClipModel.from_pretrained(TINY_MODEL_PATH)
    args = trainer_args(tmp_path, learning_rate=1e-3, max_steps=20, logging_steps=4, save_strategy="steps",
                        save_steps=20, **{CHECKPOINTING: True})
    trainer = Trainer(model=model, args=args, train_dataset=pairs, eval_dataset=pairs[:64],
                      data_collator=DualClipDataCollator(load_processor(TINY_MODEL_PATH)))
    before = trainer.evaluate()["eval_loss"]  # the Trainer gets the loss without labels, in evaluation too
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 5 and losses[-1] < losses[0] - 1.0, losses
    assert after < before - 1.0, (before, after)

    checkpoint = tmp_path / "checkpoint-20"
    assert (checkpoint / "model.safetensors").is_file()
    assert not list(checkpoint.glob("pytorch_model*"))  # (training_args.bin is the Trainer's own pickle)
    reloaded = DualClipModel.from_pretrained(checkpoint)
    trained = trainer.model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=0, msg=name)


def test_tuple_examples_survive_the_trainers_column_filter(tmp_path, processor, digit_pairs):
    from transformers import Trainer

    pairs = [(example["image"], example["caption"]) for example in digit_pairs[:64]]
    args = trainer_args(tmp_path, remove_unused_columns=True, max_steps=2)
    Trainer(model=new_model(), args=args, train_dataset=pairs, data_collator=DualClipDataCollator(processor)).train()
    # mapping examples lose `image`/`caption` to that filter: the collator says what to do
    args = trainer_args(tmp_path, remove_unused_columns=True, max_steps=1)
    trainer = Trainer(model=new_model(), args=args, train_dataset=digit_pairs[:64],
                      data_collator=DualClipDataCollator(processor))
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        trainer.train()


def test_gradient_checkpointing_same_gradients_and_recomputes(processor, digit_pairs):
    batch = DualClipDataCollator(processor)(digit_pairs[:8])
    plain, checkpointed = new_model(), new_model()
    getattr(checkpointed, f"{CHECKPOINTING}_enable")()
    calls = []
    for model in (plain, checkpointed):
        mlp = model.vision_model.encoder.layers[0].mlp
        # (a wrapped forward, not a forward hook: torch does not run module hooks when it recomputes)
        mlp.forward = lambda hidden, forward=mlp.forward, model=model: calls.append(model) or forward(hidden)
        model.train()
        model(**batch).loss.backward()
    assert calls.count(plain) == 1 and calls.count(checkpointed) == 2  # the backward pass re-ran the layer
    grads = {name: p.grad for name, p in plain.named_parameters()}
    for name, parameter in checkpointed.named_parameters():
        torch.testing.assert_close(parameter.grad, grads[name], rtol=1e-5, atol=1e-6, msg=name)


# --- LiT ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tower, frozen_prefixes", [("vision", ("vision_model.", "visual_projection.")),
                                                    ("text", ("text_model.", "text_projection."))])
def test_freeze_tower_trains_only_the_other_side(processor, digit_pairs, tower, frozen_prefixes):
    model = new_model()
    count = freeze_tower(model, tower)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters() if name.startswith(frozen_prefixes)}
    assert count == sum(p.numel() for name, p in model.named_parameters() if name in frozen)
    assert model.logit_scale.requires_grad

    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(**DualClipDataCollator(processor)(digit_pairs[:8])).loss.backward()
    optimizer.step()
    tower_module = getattr(model, frozen_prefixes[0].rstrip("."))
    assert not tower_module.training and not any(m.training for m in tower_module.modules())  # stays in eval mode
    for name, tensor in model.state_dict().items():
        changed = not torch.equal(tensor, before[name])
        if name.startswith(frozen_prefixes):
            assert not changed, name
    assert not torch.equal(model.logit_scale, before["logit_scale"])

    assert freeze_tower(model, tower, frozen=False) == count
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    model(**DualClipDataCollator(processor)(digit_pairs[:2]))
    assert tower_module.training


def test_freeze_tower_bad_input():
    with pytest.raises(ValueError, match="tower must be one of 'vision', 'text'; got 'image'"):
        freeze_tower(new_model(), "image")
    with pytest.raises(ValueError, match="needs a DualClipModel"):
        freeze_tower(torch.nn.Linear(2, 2), "text")


# --- device_map ---------------------------------------------------------------------------------------------------


def test_device_map_never_splits_a_layer():
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes

    torch.manual_seed(0)
    model = DualClipModel(DualClipConfig(
        text_config=dict(vocab_size=64, bos_token_id=62, eos_token_id=63, pad_token_id=0, hidden_size=32,
                         intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    ))
    no_split = model._no_split_modules
    sizes = compute_module_sizes(model)
    layer = max(sizes[name] for name, module in model.named_modules() if type(module).__name__ in no_split)
    # Fake GPUs (accelerate only warns that they are absent) that each hold three times the largest unsplittable
    # block, then the CPU: the model must spread over several of them.
    max_memory = {gpu: 3 * layer for gpu in range(8)}
    max_memory["cpu"] = 2 * sizes[""]
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=list(no_split))
    assert len(set(device_map.values())) >= 3, device_map

    def device_of(parameter_name):
        matches = [key for key in device_map
                   if key == "" or parameter_name == key or parameter_name.startswith(key + ".")]
        return device_map[max(matches, key=len)]

    split_somewhere = checked = 0
    for module_name, module in model.named_modules():
        if type(module).__name__ in no_split:
            devices = {device_of(f"{module_name}.{name}") for name, _ in module.named_parameters()}
            assert len(devices) == 1, (module_name, devices)
            checked += 1
        elif module_name and len({device_of(f"{module_name}.{name}") for name, _ in module.named_parameters()}) > 1:
            split_somewhere += 1
    assert checked == 2 + 4 + 4  # both embeddings and every encoder layer
    assert split_somewhere  # the towers themselves were split, between layers


def test_device_map_auto_with_max_memory_runs_offloaded(tmp_path):
    from tiny_models import MODEL, pixel_batch, text_batch

    torch.manual_seed(0)
    model = DualClipModel(DualClipConfig(**MODEL)).eval()
    model.save_pretrained(tmp_path / "model")
    input_ids, attention_mask = text_batch(lengths=(5, 16, 9))
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_batch(3), return_loss=True)
    with torch.no_grad():
        expected = model(**batch)
    # A CPU budget of half the model: the rest is offloaded to disk, block by block.
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    split = DualClipModel.from_pretrained(tmp_path / "model", device_map="auto", offload_folder=str(tmp_path / "off"),
                                          max_memory={"cpu": size // 2, "disk": size * 4})
    assert set(split.hf_device_map.values()) == {"cpu", "disk"}, split.hf_device_map
    with torch.no_grad():
        got = split(**batch)
    torch.testing.assert_close(got.logits_per_image, expected.logits_per_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-5)


# --- accelerate launch, 2 processes ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load_example():
    spec = importlib.util.spec_from_file_location("finetune_trainer", FINETUNE_EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN = ["--max-steps", "3", "--optim", "sgd", "--learning-rate", "5", "--no-shuffle", "--logging-steps", "1"]


def _weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def _losses(folder):
    with open(os.path.join(folder, "log_history.json")) as file:
        return [entry["loss"] for entry in json.load(file) if "loss" in entry]


def test_accelerate_launch_two_processes_train_on_the_global_batch(tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo), 8 pairs each, equals 1 process on the 16 pairs, step by step;
    with `loss_gather_features` off it does not."""
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(FINETUNE_EXAMPLE.parent)!r})\n"
        "import finetune_trainer\n"
        f"run = {RUN!r} + ['--per-device-batch-size', '8']\n"
        "finetune_trainer.main(run + ['--output-dir', sys.argv[1] + '/gather'])\n"
        "finetune_trainer.main(run + ['--output-dir', sys.argv[1] + '/local', '--no-gather'])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HOME": str(tmp_path / "hf_home")}  # no user accelerate config
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), str(worker), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    _load_example().main(RUN + ["--per-device-batch-size", "16", "--output-dir", str(tmp_path / "single")])
    single, gather, local = (_weights(tmp_path / name) for name in ("single", "gather", "local"))
    moved = max((single[name] - tensor).abs().max().item() for name, tensor in _weights_start().items())
    assert moved > 1e-2  # the three steps changed the weights
    gather_diff = max((single[name] - gather[name]).abs().max().item() for name in single)
    local_diff = max((single[name] - local[name]).abs().max().item() for name in single)
    assert gather_diff < 1e-5, gather_diff
    assert local_diff > 1e-3, local_diff
    np.testing.assert_allclose(_losses(tmp_path / "gather"), _losses(tmp_path / "single"), atol=2e-4)
    assert np.abs(np.subtract(_losses(tmp_path / "local"), _losses(tmp_path / "single"))).max() > 1e-2


def _weights_start():
    from dualclip.tiny_model import TINY_MODEL_PATH

    return {name: tensor.float() for name, tensor in _weights(TINY_MODEL_PATH).items()}

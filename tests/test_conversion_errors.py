"""Bad input to the converters: each a clear error, nothing written, nothing from a checkpoint executed."""

import pickle

import pytest
import torch
from conversion_refs import REDUCED_OPENAI, openai_model, save_openai_archive, write_json
from safetensors.torch import save_file

from dualclip.cli import main
from dualclip.conversion import ConversionError, Verification, convert_checkpoint, read_checkpoint
from dualclip.conversion import converters as converters_module

MARKER = "executed.txt"


class CreatesAFile:
    """Unpickling this object would call `open(path, "w")`, creating the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def small_state(tmp_path_factory):
    """A small OpenAI ViT state dict and its archive."""
    folder = tmp_path_factory.mktemp("checkpoints")
    model = openai_model(**REDUCED_OPENAI["ViT-B/32"])
    torch.save(model.state_dict(), folder / "state.pt")
    save_openai_archive(model, folder / "archive.pt")
    return folder


def _nothing_written(parent, name="out"):
    leftovers = [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]
    assert leftovers == [], leftovers


def _cli(capsys, *args):
    code = main(["convert", *map(str, args)])
    return code, capsys.readouterr().err


def test_wrong_from(small_state, tmp_path, capsys):
    code, err = _cli(capsys, small_state / "state.pt", tmp_path / "out", "--from", "hf")
    assert code == 2 and "--from hf expects a transformers CLIP folder" in err
    hub = tmp_path / "hub"
    hub.mkdir()
    write_json(hub / "open_clip_config.json", {"model_cfg": {}})
    code, err = _cli(capsys, hub, tmp_path / "out", "--from", "openai")
    assert code == 2 and "--from openai expects a checkpoint file" in err
    with pytest.raises(SystemExit) as exit_info:  # not one of the choices: argparse's own error
        main(["convert", str(small_state / "state.pt"), str(tmp_path / "out"), "--from", "caffe"])
    assert exit_info.value.code == 2 and "invalid choice: 'caffe'" in capsys.readouterr().err
    _nothing_written(tmp_path)


def test_openclip_checkpoint_read_as_openai(small_state, tmp_path):
    state = torch.load(small_state / "state.pt")
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pt")
    with pytest.raises(ConversionError, match="training checkpoint"):
        convert_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out", "openai")
    _nothing_written(tmp_path)


def test_raw_openclip_checkpoint_without_config(small_state, tmp_path, capsys):
    state = torch.load(small_state / "state.pt")
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pt")
    code, err = _cli(capsys, tmp_path / "ckpt.pt", tmp_path / "out")
    assert code == 2 and "pass --openclip-config" in err and "--openclip-model" in err
    code, err = _cli(capsys, tmp_path / "ckpt.pt", tmp_path / "out", "--openclip-model", "ViT-B-33")
    assert code == 2 and "not one of OpenCLIP's model configs; did you mean ViT-B-32" in err
    _nothing_written(tmp_path)


def test_unsupported_option_from_the_command_line(small_state, tmp_path, capsys):
    config = dict(embed_dim=32, vision_cfg=dict(image_size=224, layers=2, width=64, patch_size=32,
                                                attentional_pool="parallel"),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2))
    code, err = _cli(capsys, small_state / "state.pt", tmp_path / "out", "--openclip-config",
                     write_json(tmp_path / "c.json", config))
    assert code == 2 and "vision_cfg.attentional_pool" in err
    _nothing_written(tmp_path)


@pytest.mark.parametrize("name", ["state.pt", "archive.pt"])
def test_truncated_checkpoint(small_state, tmp_path, name):
    data = (small_state / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        convert_checkpoint(tmp_path / name, tmp_path / "out")
    _nothing_written(tmp_path)


def test_corrupted_archive_is_caught_by_its_checksums(small_state, tmp_path):
    data = bytearray((small_state / "archive.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside some tensor's data: torch.jit.load alone would not notice
    (tmp_path / "archive.pt").write_bytes(bytes(data))
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        convert_checkpoint(tmp_path / "archive.pt", tmp_path / "out")
    _nothing_written(tmp_path)


def test_truncated_safetensors(tmp_path):
    save_file({"a": torch.zeros(1000)}, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[:200])
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "w.safetensors")


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_runs_code_is_refused_and_never_run(tmp_path, writer):
    marker = tmp_path / MARKER
    payload = {"visual.proj": torch.zeros(2, 2), "payload": CreatesAFile(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as stream:
            pickle.dump(payload, stream)
    with pytest.raises(ConversionError) as error:
        convert_checkpoint(path, tmp_path / "out")
    assert "Nothing from it was executed" in str(error.value) or "not a PyTorch checkpoint" in str(error.value)
    assert not marker.exists()
    _nothing_written(tmp_path)


def test_existing_output_is_refused_then_replaced_with_overwrite(small_state, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    code, err = _cli(capsys, small_state / "state.pt", out)
    assert code == 2 and "already exists; pass --overwrite" in err
    assert (out / "keep.txt").read_text() == "old" and len(list(out.iterdir())) == 1

    code, _ = _cli(capsys, small_state / "state.pt", out, "--overwrite")
    assert code == 0 and not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        convert_checkpoint(small_state / "state.pt", tmp_path / "file", overwrite=True)


def test_failed_verification_leaves_nothing(small_state, tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        return Verification("a reference", {"logits_per_image": 1.0}, scale=1.0, tolerance=1e-4)

    monkeypatch.setattr(converters_module, "verify_openai", failing)
    with pytest.raises(ConversionError, match="verification FAILED against a reference"):
        convert_checkpoint(small_state / "state.pt", tmp_path / "out", verify=True)
    _nothing_written(tmp_path)


def test_other_bad_arguments(small_state, tmp_path):
    with pytest.raises(FileNotFoundError):
        convert_checkpoint(tmp_path / "missing.pt", tmp_path / "out")
    with pytest.raises(ConversionError, match="max shard size"):
        convert_checkpoint(small_state / "state.pt", tmp_path / "out", max_shard_size="lots")
    with pytest.raises(ConversionError, match="dtype must be one of"):
        convert_checkpoint(small_state / "state.pt", tmp_path / "out", dtype="float64")
    with pytest.raises(ConversionError, match="outside the source"):
        convert_checkpoint(small_state / "state.pt", small_state / "state.pt" / "out")
    _nothing_written(tmp_path)

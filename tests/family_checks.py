"""Checks every image-tower family's tests make, written once: conversion of an OpenCLIP hub folder compared with
open_clip, the save/`AutoModel` round trip, and loading with `trust_remote_code=True` where dualclip is absent.

Plain module imported by the `test_*_family.py` files (after conftest has put the torchvision stand-in on the path).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import LOAD_WITHOUT_DUALCLIP
from transformers import AutoModel

from dualclip import DualClipModel, DualClipVisionModel, DualClipVisionModelWithProjection

TOLERANCE = 1e-5


def relative_error(got, want) -> float:
    """Largest absolute difference relative to the reference's scale."""
    return float((got - want).abs().max() / want.abs().max())


def save_openclip_hub_folder(reference, model_cfg: dict, folder, preprocess_cfg: dict | None = None):
    """An OpenCLIP hub folder (`open_clip_config.json` + `open_clip_model.safetensors`) of `reference`."""
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                              "preprocess_cfg": preprocess_cfg or {}}))
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder


def convert_and_compare_with_openclip(reference, model_cfg: dict, tmp_path, table: dict, test_name: str, arch: dict):
    """Converts `reference` (an open_clip model of `model_cfg`, logit scale above ln(100)) through
    `dualclip.conversion.convert_checkpoint` with `--verify`, `table[test_name] = arch` for the reduced timm tower, and
    returns `(result, model, errors)`: the relative errors of text features (with the padding mask a processor sends,
    which these models ignore), image features and logits against open_clip's."""
    from dualclip.conversion import convert_checkpoint

    with torch.no_grad():
        reference.logit_scale.fill_(4.9)
    folder = save_openclip_hub_folder(reference, model_cfg, tmp_path / "hub")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(table, test_name, arch)
        result = convert_checkpoint(folder, tmp_path / "out", verify=True)
    assert result.verification.passed, result.verification.summary()
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert model.config.text_config.mask_padding is False

    context = model_cfg["text_cfg"]["context_length"]
    ids = torch.zeros(2, context, dtype=torch.long)
    ids[0, :5] = torch.tensor([49406, 320, 1125, 539, 49407])
    ids[1] = torch.randint(1, 49406, (context,), generator=torch.Generator().manual_seed(1))
    ids[1, 0], ids[1, -1] = 49406, 49407
    mask = (ids != 0).long()
    size = model.config.vision_config.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want_text = reference.encode_text(ids, normalize=False)
        want_image = reference.encode_image(images, normalize=False)
        want_logits = reference.logit_scale.exp() * torch.nn.functional.normalize(want_image, dim=-1) @ (
            torch.nn.functional.normalize(want_text, dim=-1).t())
        out = model(input_ids=ids, attention_mask=mask, pixel_values=images)
        errors = {
            "text": relative_error(model.encode_text(ids, attention_mask=mask), want_text),
            "image": relative_error(model.encode_image(images), want_image),
            "logits": relative_error(out.logits_per_image, want_logits),
        }
    return result, model, errors


@torch.no_grad()
def assert_round_trips(model: DualClipModel, folder, family_module: str, tower_class: str, images, **load_kwargs):
    """`model` saved and loaded back through `AutoModel` (`load_kwargs` passed on; with its family's code file for
    `trust_remote_code`) is tensor-identical and gives the same logits; its image tower loads into the vision
    classes. Returns the loaded model."""
    config = model.config
    model.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["vision_config"]["model_type"] == config.vision_config.model_type
    assert (folder / f"{family_module}.py").exists()

    loaded = AutoModel.from_pretrained(folder, **load_kwargs).eval()
    assert type(loaded) is DualClipModel and type(loaded.vision_model).__name__ == tower_class
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    input_ids = torch.randint(1, config.text_config.vocab_size - 2, (2, 16), generator=torch.Generator().manual_seed(3))
    input_ids[:, -1] = config.text_config.vocab_size - 1
    assert torch.equal(loaded(input_ids=input_ids, pixel_values=images).logits_per_text,
                       model(input_ids=input_ids, pixel_values=images).logits_per_text)

    vision_model = DualClipVisionModelWithProjection.from_pretrained(folder, config=config.vision_config).eval()
    assert torch.equal(vision_model.encode_image(images), model.encode_image(images))
    tower = DualClipVisionModel(config.vision_config).eval()
    tower.save_pretrained(folder / "tower")
    assert type(AutoModel.from_pretrained(folder / "tower")) is DualClipVisionModel
    return loaded


_IMAGE_FEATURES_WITHOUT_DUALCLIP = LOAD_WITHOUT_DUALCLIP + textwrap.dedent(
    """
    with torch.no_grad():
        features = model.get_image_features(torch.load(sys.argv[2])).pooler_output
    print(json.dumps({"module": type(model).__module__, "features": features.tolist()}))
    """
)


def image_features_without_dualclip(model, tmp_path, images) -> torch.Tensor:
    """The image features of `model`, saved and loaded with `trust_remote_code=True` in a process where dualclip
    cannot be imported (the saved folder's own code runs)."""
    model.save_pretrained(tmp_path / "model")
    torch.save(images, tmp_path / "pixels.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _IMAGE_FEATURES_WITHOUT_DUALCLIP, str(tmp_path / "model"), str(tmp_path / "pixels.pt")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["module"].startswith("dualclip")
    return torch.tensor(report["features"])


def pixels(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Gaussian-noise images."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def image_tower_of(reference, model_cfg: dict, vision_tower, table: dict, test_name: str, arch: dict):
    """`reference`'s image tower converted by a family's `vision_tower(vision_cfg, embed_dim, tensors)` (with
    `table[test_name] = arch` for the reduced timm tower), loaded strictly into `DualClipVisionModelWithProjection`."""
    tensors = {key: value for key, value in reference.state_dict().items() if key.startswith("visual.")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(table, test_name, arch)
        config, state = vision_tower(model_cfg["vision_cfg"], model_cfg["embed_dim"], tensors)
    model = DualClipVisionModelWithProjection(config).eval()
    model.load_state_dict(state, strict=True)
    return model

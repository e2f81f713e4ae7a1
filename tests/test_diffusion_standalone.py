"""Pipelines saved with `dualclip.diffusion.save_pipeline_standalone` load where dualclip is not installed
(diffusers' custom-component route, `trust_remote_code=True`) and encode prompts exactly as before saving."""

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DiffusionPipeline  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import tiny_diffusion as tiny  # noqa: E402
from dualclip import DualClipTextModel, DualClipTextModelWithProjection  # noqa: E402
from dualclip.conditioning import PromptEncoder  # noqa: E402
from dualclip.diffusion import save_pipeline_standalone  # noqa: E402
from tiny_models import WITHOUT_DUALCLIP  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse"
LONG_PROMPT = " ".join(tiny.WORDS * 6)  # 108 tokens: diffusers truncates at 77
NEGATIVE = "blurry, low quality"
# HTML entities and curly quotes: where transformers' fast CLIP tokenizer differs from OpenAI's (and dualclip's)
TRICKY_TEXT = "caf\u00e9 &amp; \u201cquoted\u201d \ufb01sh"
WEIGHTED = "a (cozy:1.3) cabin, [people] BREAK deep blue"
TOLERANCE = 1e-6


def encode_all(pipe) -> dict:
    """Every encoding the test compares: diffusers' `encode_prompt` (short and truncated long prompts, with a
    negative prompt, without and with clip skip), the tokenizers' ids, and a two-step image."""
    out = {}
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    with torch.no_grad():
        for case, (prompt, clip_skip) in {"short": (PROMPT, None), "long": (LONG_PROMPT, None),
                                          "skip": (PROMPT, 1)}.items():
            if sdxl:
                embeds = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                            do_classifier_free_guidance=True, negative_prompt=NEGATIVE,
                                            clip_skip=clip_skip)
                names = ("prompt", "negative", "pooled", "negative_pooled")
            else:
                embeds = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=NEGATIVE, clip_skip=clip_skip)
                names = ("prompt", "negative")
            out.update({f"{case}_{name}": tensor.contiguous() for name, tensor in zip(names, embeds)})
    for name in ("tokenizer", "tokenizer_2"):
        if getattr(pipe, name, None) is not None:
            out[f"{name}_ids"] = getattr(pipe, name)(TRICKY_TEXT, return_tensors="pt").input_ids
    image = pipe(PROMPT, num_inference_steps=2, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    out["image"] = torch.from_numpy(np.ascontiguousarray(image))
    return out


# Loads each folder of `sys.argv[1]` ({kind: folder}) with `trust_remote_code=True`, writes `encode_all` of each
# pipeline to `<out>/<kind>.safetensors` and the modules of its components to `<out>/modules.json`.
LOAD_AND_ENCODE = textwrap.dedent(
    """
    import os
    import numpy as np
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    PROMPT, LONG_PROMPT, NEGATIVE, TRICKY_TEXT = {texts!r}
    {encode_all}
    modules = {{}}
    for kind, folder in json.loads(sys.argv[1]).items():
        pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        modules[kind] = {{name: type(c).__module__ for name, c in pipe.components.items() if c is not None}}
        save_file(encode_all(pipe), os.path.join(sys.argv[2], kind + ".safetensors"))
        if EXTRA is not None:
            save_file(EXTRA(pipe, kind), os.path.join(sys.argv[2], kind + "-extra.safetensors"))
    with open(os.path.join(sys.argv[2], "modules.json"), "w") as f:
        json.dump(modules, f)
    """
).format(texts=(PROMPT, LONG_PROMPT, NEGATIVE, TRICKY_TEXT), encode_all=inspect.getsource(encode_all))

WITHOUT = WITHOUT_DUALCLIP + "EXTRA = None\n" + LOAD_AND_ENCODE
# Where dualclip is installed: the folder loads with trust_remote_code=True too, dualclip's PromptEncoder takes the
# pipeline, and the pipeline (holding diffusers' copies of the classes) saves standalone again, as `<kind>-resaved`.
WITH = textwrap.dedent(
    f"""
    import json, os, sys, torch
    import dualclip
    from dualclip.conditioning import PromptEncoder
    from dualclip.diffusion import save_pipeline_standalone

    def EXTRA(pipe, kind):
        save_pipeline_standalone(pipe, os.path.join(sys.argv[2], kind + "-resaved"))
        return PromptEncoder.from_pipeline(pipe).encode({WEIGHTED!r}, negative_prompt={NEGATIVE!r})
    """
) + LOAD_AND_ENCODE


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    yield from tiny.one_torch_thread()


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """SD 1.x (dualclip text encoder and tokenizer) and SDXL (both encoders and both tokenizers dualclip's),
    each saved standalone; {kind: (pipeline, folder)}."""
    root = tmp_path_factory.mktemp("standalone")
    encoders = tiny.save_stock_text_encoders(str(root / "stock"))
    text_encoder = DualClipTextModel.from_pretrained(encoders["text_encoder"]).eval()
    text_encoder_2 = DualClipTextModelWithProjection.from_pretrained(encoders["text_encoder_2"]).eval()
    pipes = {
        "sd": tiny.sd_pipeline(*tiny.sd_unet_and_vae(), text_encoder, tiny.tokenizer(tiny.EOS_TOKEN)),
        "sdxl": tiny.sdxl_pipeline(*tiny.sdxl_unet_and_vae(), text_encoder, text_encoder_2,
                                   tiny.tokenizer(tiny.EOS_TOKEN), tiny.tokenizer("!")),
    }
    saved = {}
    for kind, pipe in pipes.items():
        save_pipeline_standalone(pipe, root / kind)
        saved[kind] = (pipe, str(root / kind))
    return saved


def run_script(script, folders, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script, json.dumps(folders), str(out)], capture_output=True,
                            text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def assert_same(got: dict, expected: dict):
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].shape == tensor.shape, name
        assert float((got[name].double() - tensor.double()).abs().max()) <= TOLERANCE, name


def test_model_index_names_code_in_the_component_folders(pipelines):
    _, folder = pipelines["sdxl"]
    index = json.loads(Path(folder, "model_index.json").read_text())
    assert index["text_encoder"] == ["dualclip_text_encoder", "DualClipTextModel"]
    assert index["text_encoder_2"] == ["dualclip_text_encoder_2", "DualClipTextModelWithProjection"]
    assert index["tokenizer"] == ["dualclip_tokenizer", "DualClipTokenizer"]
    assert index["tokenizer_2"] == ["dualclip_tokenizer_2", "DualClipTokenizer"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    for name, entry in index.items():
        if isinstance(entry, list) and str(entry[0]).startswith("dualclip_"):
            entry_file = Path(folder, name, entry[0] + ".py")
            assert "import dualclip" not in entry_file.read_text()


@pytest.fixture(scope="module")
def with_dualclip(pipelines, tmp_path_factory):
    """The SDXL folder loaded, encoded and saved again in a process that imported dualclip; its output folder."""
    return run_script(WITH, {"sdxl": pipelines["sdxl"][1]}, tmp_path_factory.mktemp("with_dualclip"))


def test_loads_without_dualclip_and_encodes_the_same(pipelines, with_dualclip, tmp_path):
    # The re-saved folder first: once a folder is loaded, its classes' modules are in `sys.modules`, where diffusers
    # would find a module path that `save_pretrained` recorded.
    folders = {"sdxl-resaved": str(with_dualclip / "sdxl-resaved")}
    folders.update({kind: folder for kind, (_, folder) in pipelines.items()})
    out = run_script(WITHOUT, folders, tmp_path)
    modules = json.loads((out / "modules.json").read_text())
    for kind in folders:
        pipe = pipelines[kind.split("-")[0]][0]
        names = ["text_encoder", "tokenizer"] + (["text_encoder_2", "tokenizer_2"] if kind != "sd" else [])
        for name in names:
            assert modules[kind][name].startswith("diffusers_modules."), (kind, name, modules[kind][name])
        assert_same(load_file(str(out / f"{kind}.safetensors")), encode_all(pipe))


def test_loads_with_dualclip_installed_and_trust_remote_code(pipelines, with_dualclip):
    pipe, _ = pipelines["sdxl"]
    out = with_dualclip
    assert_same(load_file(str(out / "sdxl.safetensors")), encode_all(pipe))
    assert_same(load_file(str(out / "sdxl-extra.safetensors")),
                PromptEncoder.from_pipeline(pipe).encode(WEIGHTED, negative_prompt=NEGATIVE))


def test_standalone_folder_asks_for_trust_remote_code(pipelines):
    """diffusers prefers a component folder's code file to the installed package, and runs it only when trusted."""
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(pipelines["sd"][1])


def test_push_to_hub_is_refused(pipelines, tmp_path):
    with pytest.raises(ValueError, match="upload the folder"):
        save_pipeline_standalone(pipelines["sd"][0], tmp_path / "pushed", push_to_hub=True)
    assert not (tmp_path / "pushed").exists()

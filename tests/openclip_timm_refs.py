"""OpenCLIP models with timm image towers, built by open_clip itself at reduced size, for the family tests.

open_clip's `create_model` reads a model config by name; `openclip_model` registers the given config under a test
name and builds it, so a test can shrink a released config (widths, depths) and keep every option that identifies
the family. A reduced timm tower is registered with timm under a name of its own (`register_timm_model`): timm's
own model class with smaller arguments. Imported after conftest has put the torchvision stand-in on the path.
"""

import json
import tempfile
from pathlib import Path

import torch
from conversion_refs import randomize_


def register_timm_model(name: str, model_class, **arguments) -> None:
    """Registers `name` with timm as `model_class(**arguments, **kwargs)` (kwargs from open_clip win)."""
    import timm
    from timm.models import register_model

    if timm.list_models(name):
        return

    def factory(pretrained=False, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg") and k != "cache_dir"}
        return model_class(**{**arguments, **kwargs})

    factory.__name__ = name
    register_model(factory)


def openclip_model(name: str, model_cfg: dict, seed: int = 0, logit_scale: float | None = None,
                   logit_bias: float | None = None):
    """`open_clip.create_model(name)` for `model_cfg`, in eval mode, every parameter and buffer randomised."""
    import open_clip

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / f"{name}.json").write_text(json.dumps(model_cfg))
        open_clip.add_model_config(folder)
    torch.manual_seed(seed)
    model = open_clip.create_model(name).eval()
    randomize_(model, seed)
    with torch.no_grad():
        if logit_scale is not None:
            model.logit_scale.fill_(logit_scale)
        if logit_bias is not None:
            model.logit_bias.fill_(logit_bias)
    return model


def released_model_config(name: str) -> dict:
    """The JSON of one of open_clip's own model configs."""
    import open_clip

    return json.loads((Path(open_clip.__file__).parent / "model_configs" / f"{name}.json").read_text())


def released_timm_arguments(module_name: str, builder: str, timm_name: str) -> dict:
    """The keyword arguments timm's registered function `timm_name` (in `timm.models.<module_name>`) passes to the
    module's builder function `builder` (e.g. `_create_eva`), read by intercepting the builder."""
    import importlib

    module = importlib.import_module(f"timm.models.{module_name}")
    captured = {}
    original = getattr(module, builder)
    setattr(module, builder, lambda variant, pretrained=False, **kwargs: captured.update(kwargs))
    try:
        getattr(module, timm_name)()
    finally:
        setattr(module, builder, original)
    return captured

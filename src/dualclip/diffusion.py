"""diffusers pipelines holding dualclip components, saved so that they load where dualclip is not installed.

`DiffusionPipeline.save_pretrained` records a component from outside diffusers and transformers by its module
path (`["dualclip.modeling_dualclip", "DualClipTextModel"]` in `model_index.json`), and `from_pretrained` then takes
the class from `sys.modules`: the folder loads only in a process that imported dualclip. diffusers' other route is
a custom component: when the component's folder holds `<name>.py` for the entry `["<name>", "<class>"]`, it loads
the class from that file with `trust_remote_code=True` (`get_class_obj_and_candidates` in
`diffusers/pipelines/pipeline_loading_utils.py`). dualclip's classes already copy their code files into the folders
they save (for transformers' remote code), so `save_pipeline_standalone` adds one entry file per component
(`dualclip_<component>.py`, importing every code file: see `_ENTRY_MODULE_DOC`) and rewrites the entry. It is a separate call, not what `save_pretrained` does, because diffusers prefers such a file to the
installed package: a folder saved this way needs `trust_remote_code=True` everywhere, dualclip installed or not.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil

ENTRY_MODULE_PREFIX = "dualclip_"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

_ENTRY_MODULE_DOC = '''"""The module diffusers loads `{class_name}` from with `trust_remote_code=True`.

Written by `dualclip.diffusion.save_pipeline_standalone`. For a local folder diffusers copies a component's module
file together with the files that file imports directly, not the files those import in turn
(`get_cached_module_file` in `diffusers/utils/dynamic_modules_utils.py`), so every code file of this folder is
imported here by name.
"""
'''


def save_pipeline_standalone(pipeline, save_directory: str | os.PathLike, **kwargs) -> None:
    """`pipeline.save_pretrained(save_directory, **kwargs)`, then records each dualclip component (text encoders,
    tokenizers, image encoders, image processors) as a diffusers custom component whose code is in its own folder.

    The folder then loads without dualclip: `DiffusionPipeline.from_pretrained(save_directory,
    trust_remote_code=True)`. Where dualclip is installed it needs `trust_remote_code=True` too, and runs the
    folder's copy of dualclip's code. Other components are saved exactly as `save_pretrained` saves them. A
    pipeline loaded from such a folder holds diffusers' copies of the classes (`diffusers_modules.local.*`), which
    plain `save_pretrained` records by that module path without their code; this function saves it standalone again.
    `push_to_hub` is refused: the rewritten `model_index.json` would not be the one pushed; upload the folder
    afterwards (`huggingface_hub.upload_folder`).
    """
    if kwargs.get("push_to_hub"):
        raise ValueError(
            "save_pipeline_standalone cannot push_to_hub: diffusers uploads while saving, before model_index.json is "
            "rewritten. Save locally, then upload the folder (huggingface_hub.upload_folder)."
        )
    pipeline.save_pretrained(save_directory, **kwargs)

    index_path = os.path.join(save_directory, pipeline.config_name)
    with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    for name, entry in index.items():
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            continue
        library, class_name = entry
        folder = os.path.join(save_directory, name)
        if library.split(".")[0] != "dualclip":
            if not _is_loaded_copy(library, class_name):
                continue
            # Loaded from such a folder: diffusers' copy of the class, which saves no code files of its own.
            _copy_code_files(type(getattr(pipeline, name)), folder)
        index[name] = [_write_entry_module(folder, name, library, class_name), class_name]
    with open(index_path, "w", encoding="utf-8") as f:
        # as diffusers' `ConfigMixin.to_json_string` writes it
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _is_loaded_copy(library: str, class_name: str) -> bool:
    """Whether `library.class_name` is diffusers' copy of a dualclip class (`diffusers_modules.local.modeling_dualclip`),
    as a pipeline loaded from a folder this function wrote holds it."""
    module = library.rsplit(".", 1)[-1]
    if not library.startswith("diffusers_modules.") or not os.path.isfile(os.path.join(_PACKAGE_DIR, f"{module}.py")):
        return False
    return hasattr(importlib.import_module(f"{__package__}.{module}"), class_name)


def _copy_code_files(cls: type, folder: str) -> None:
    from transformers.dynamic_module_utils import get_relative_import_files

    module_file = inspect.getfile(cls)
    for path in [module_file, *get_relative_import_files(module_file)]:
        shutil.copyfile(path, os.path.join(folder, os.path.basename(path)))


def _write_entry_module(folder: str, component: str, library: str, class_name: str) -> str:
    """Writes `<folder>/dualclip_<component>.py`, which imports `class_name` and names every code file it needs;
    returns the module name for `model_index.json`."""
    from transformers.dynamic_module_utils import get_relative_import_files

    module = library.rsplit(".", 1)[-1]
    module_file = os.path.join(folder, f"{module}.py")
    if not os.path.isfile(module_file):
        raise RuntimeError(
            f"{component}: {library}.{class_name} saved no code file {module}.py into {folder}; only classes "
            "registered for an Auto class (as `import dualclip` registers its own) copy their code when saved"
        )
    needed = sorted({os.path.basename(path)[: -len(".py")] for path in get_relative_import_files(module_file)})
    lines = [_ENTRY_MODULE_DOC.format(class_name=class_name), f"from .{module} import {class_name}  # noqa: F401"]
    lines += [f"from .{name} import __name__ as _{name}  # noqa: F401" for name in needed if name != module]
    entry_module = f"{ENTRY_MODULE_PREFIX}{component}"
    with open(os.path.join(folder, f"{entry_module}.py"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return entry_module

"""pytest plugin for the runs of diffusers' pipeline tests (`-p swap_plugin`; see run.py).

Records, per test, the classes of the text encoders and tokenizers each pipeline was built with (every
`DiffusionPipeline.register_modules` call), as JSON lines in `$DUALCLIP_DIFFTESTS_RECORD`. run.py reads them to
prove the swap happened: in the dualclip run the CLIP encoders are dualclip classes, in the stock run they are not.
"""

import json
import os

_RECORD = os.environ.get("DUALCLIP_DIFFTESTS_RECORD")
_current = {"test": None, "components": []}


def _name(value):
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def pytest_configure(config):
    if not _RECORD:
        return
    from diffusers import DiffusionPipeline

    original = DiffusionPipeline.register_modules

    def register_modules(self, **kwargs):
        seen = {key: _name(value) for key, value in kwargs.items()
                if value is not None and key.startswith(("text_encoder", "tokenizer"))}
        if seen and _current["test"] is not None:
            _current["components"].append(seen)
        return original(self, **kwargs)

    DiffusionPipeline.register_modules = register_modules


def pytest_runtest_setup(item):
    _current["test"] = item.nodeid
    _current["components"] = []


def pytest_runtest_teardown(item):
    if _RECORD and _current["components"]:
        with open(_RECORD, "a") as handle:
            handle.write(json.dumps({"test": item.nodeid, "components": _current["components"]}) + "\n")
    _current["test"] = None

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _put_torchvision_stand_in_on_path() -> None:
    """Lets the reference implementations (open_clip, clip) import; see tests/_stubs/README.md.

    transformers and diffusers decide once whether torchvision is installed; that decision is made (and cached)
    here, before the stand-in becomes importable, so neither library ever tries to use it.
    """
    from transformers.utils.import_utils import is_torchvision_available

    assert not is_torchvision_available(), "a real torchvision is installed; the stand-in would shadow it"
    try:
        import diffusers.utils.import_utils  # noqa: F401  (evaluates its torchvision flag now)
    except ImportError:
        pass
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_stubs"))


_put_torchvision_stand_in_on_path()


def pytest_configure(config):
    # Tiny test models are dominated by threading overhead; each xdist worker gets one core's worth.
    import torch

    torch.set_num_threads(1)

"""Import stand-in for torchvision, used only by the tests (see tests/_stubs/README.md)."""
from . import datasets, ops, transforms  # noqa: F401

__version__ = "0.0.0+stub"

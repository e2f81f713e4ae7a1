import os
import sys

# Reference implementations (open_clip, clip) import torchvision at import time; there is no CPU build
# of it here, so the tests alone put an import stand-in first on sys.path. The package never sees it.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_stubs"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

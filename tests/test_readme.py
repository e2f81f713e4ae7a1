"""Every Python block in README.md runs as written (each in a fresh process, in an empty folder, offline)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def _heading_before(block: str) -> str:
    text = README.read_text(encoding="utf-8")
    before = text[: text.index(block)]
    return re.findall(r"^#+ (.*)$", before, flags=re.M)[-1]


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(index, tmp_path):
    block = BLOCKS[index]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"README block {index} (under '{_heading_before(block)}'):\n{result.stderr[-3000:]}"


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 10

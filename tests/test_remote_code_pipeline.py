"""A saved folder stands alone: `pipeline(..., trust_remote_code=True)` runs it where dualclip is not installed."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from tiny_models import WITHOUT_DUALCLIP
import PIL.Image
from transformers import AutoModel, AutoProcessor, pipeline

import dualclip

SCRIPT = WITHOUT_DUALCLIP + textwrap.dedent(
    """
    import numpy as np, PIL.Image
    from transformers import pipeline

    classifier = pipeline("zero-shot-image-classification", model=sys.argv[1], trust_remote_code=True)
    image = PIL.Image.fromarray(np.load(sys.argv[2]))
    result = classifier(image, candidate_labels=["a handwritten digit zero", "a handwritten digit seven"])
    print(json.dumps({"module": type(classifier.model).__module__, "result": result}))
    """
)


def test_zero_shot_pipeline_with_remote_code_without_dualclip(tmp_path):
    folder = tmp_path / "model"
    AutoModel.from_pretrained(dualclip.TINY_MODEL_PATH).save_pretrained(folder)
    AutoProcessor.from_pretrained(dualclip.TINY_MODEL_PATH).save_pretrained(folder)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForZeroShotImageClassification"] == "modeling_dualclip.DualClipModel"

    pixels = (np.random.default_rng(0).random((8, 8)) * 255).astype("uint8")
    np.save(tmp_path / "image.npy", pixels)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(tmp_path / "image.npy")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["module"].startswith("dualclip")

    expected = pipeline("zero-shot-image-classification", model=str(folder))(
        PIL.Image.fromarray(pixels), candidate_labels=["a handwritten digit zero", "a handwritten digit seven"]
    )
    assert [row["label"] for row in report["result"]] == [row["label"] for row in expected]
    for got, want in zip(report["result"], expected):
        assert abs(got["score"] - want["score"]) < 1e-5

"""The README.md model card of a converted folder, filled from the template in `dualclip/assets/model_cards/`."""

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template

TEMPLATE = "converted_model.md"

LICENCES = {
    "openai": (
        "OpenAI released the CLIP weights with the code under the MIT licence "
        "(https://github.com/openai/CLIP/blob/main/LICENSE); read OpenAI's model card for the intended uses "
        "and limitations.",
        "mit",
    ),
    "openclip": (
        "The weights keep the licence under which they were published (OpenCLIP's code is MIT; LAION, DataComp "
        "and other releases each state their own): check the source model card before redistributing.",
        None,
    ),
    "hf": ("The weights keep the licence of the source repository: check its model card before redistributing.", None),
}
LICENCES["dualclip"] = LICENCES["hf"]

_USAGE = {
    "DualClipModel": '''```python
import dualclip  # registers the dualclip classes with the transformers Auto classes
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("path/to/this/folder").eval()
processor = AutoProcessor.from_pretrained("path/to/this/folder")
inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=Image.open("cat.jpg"),
                   return_tensors="pt", padding=True)
with torch.no_grad():
    probs = model(**inputs).logits_per_image.softmax(dim=-1)
```''',
    "text": '''```python
import dualclip  # registers the dualclip classes with the transformers Auto classes
import torch
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("path/to/this/folder").eval()
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
with torch.no_grad():
    outputs = model(**tokenizer(["a photo of a cat"], padding="max_length", return_tensors="pt"))
```''',
    "vision": '''```python
import dualclip  # registers the dualclip classes with the transformers Auto classes
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained("path/to/this/folder").eval()
processor = AutoImageProcessor.from_pretrained("path/to/this/folder")
with torch.no_grad():
    outputs = model(**processor(Image.open("cat.jpg"), return_tensors="pt"))
```''',
}


@dataclass
class CardFacts:
    """What the model card says about one conversion."""

    title: str
    source_kind: str  # "openai", "openclip", "hf" or "dualclip" (an export to transformers CLIP)
    source_description: str
    source: str
    architecture: str
    num_parameters: int
    dtype: str
    model_class: str
    verification: str
    notes: list[str] = field(default_factory=list)


def layers(count: int) -> str:
    """`"1 layer"`, `"12 layers"`."""
    return f"{count} layer{'' if count == 1 else 's'}"


def _parameters(count: int) -> str:
    return f"{count:,} ({count / 1e6:.1f}M)"


def _usage(model_class: str) -> str:
    if model_class.startswith("CLIP"):
        return (
            f"```python\nfrom transformers import {model_class}\n\n"
            f'model = {model_class}.from_pretrained("path/to/this/folder")\n```'
        )
    if model_class.startswith("DualClipText"):
        return _USAGE["text"]
    if model_class.startswith("DualClipVision"):
        return _USAGE["vision"]
    return _USAGE["DualClipModel"]


def render_model_card(facts: CardFacts) -> str:
    """The card's markdown text."""
    template = Template(resources.files("dualclip").joinpath("assets", "model_cards", TEMPLATE).read_text("utf-8"))
    licence, licence_tag = LICENCES[facts.source_kind]
    exported = facts.model_class.startswith("CLIP")
    loading = (
        f"It is a stock transformers `{facts.model_class}` folder."
        if exported
        else "It loads with `transformers` once `dualclip` is installed (or with `trust_remote_code=True` without it)."
    )
    zero_shot = facts.model_class in ("DualClipModel", "CLIPModel")
    return template.substitute(
        title=facts.title,
        license_tag=f"license: {licence_tag}\n" if licence_tag else "",
        pipeline_tag="zero-shot-image-classification" if zero_shot else "feature-extraction",
        source_description=facts.source_description,
        loading=loading,
        source=facts.source,
        architecture=facts.architecture,
        parameters=_parameters(facts.num_parameters),
        dtype=facts.dtype,
        verification=facts.verification,
        usage=_usage(facts.model_class),
        licence=licence,
        notes="\n".join(f"- {note}" for note in facts.notes) if facts.notes else "None.",
    )


def write_model_card(folder, facts: CardFacts) -> None:
    """Writes `README.md` into `folder`."""
    (Path(folder) / "README.md").write_text(render_model_card(facts).rstrip("\n") + "\n", encoding="utf-8")

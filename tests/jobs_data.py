"""Small generated data for the dataset-job tests (tests/test_jobs_*.py): digit images, bad files, tars, tables."""

import io
import os
import tarfile

import numpy as np
import PIL.Image
import torch

from dualclip.tiny_model import DIGIT_NAMES, DIGIT_TEMPLATE, load_heldout_digits


def digit_images(count: int, offset: int = 0):
    images, labels = load_heldout_digits()
    return images[offset : offset + count], labels[offset : offset + count]


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_digit_folder(folder, count: int, offset: int = 0, class_folders: bool = True) -> list[tuple[str, int]]:
    """`count` held-out digits as 8x8 PNGs under `folder/<name>/` (or flat); returns sorted (path, label) pairs."""
    images, labels = digit_images(count, offset)
    files = []
    for index, (image, label) in enumerate(zip(images, labels)):
        sub = os.path.join(folder, DIGIT_NAMES[label]) if class_folders else os.fspath(folder)
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"{offset + index:04d}.png")
        with open(path, "wb") as file:
            file.write(png_bytes(image))
        files.append((path, int(label)))
    return sorted(files)


def caption(label: int, index: int | None = None) -> str:
    text = DIGIT_TEMPLATE.format(DIGIT_NAMES[label])
    return text if index is None else f"{text} number {index}"


def bad_files(folder) -> dict[str, str]:
    """Unreadable files of each kind: name -> the start of the reason the jobs give."""
    os.makedirs(folder, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg = io.BytesIO()
    PIL.Image.fromarray(noise).save(jpeg, format="JPEG", quality=95)
    files = {
        "empty.png": (b"", "empty file"),
        "notes.png": (b"this is not an image\n", "not an image"),
        "truncated.jpg": (jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "truncated or corrupt"),
        "corrupt.png": (_zeroed(png_bytes(noise), 200, 260), "truncated or corrupt"),
    }
    for name, (data, _) in files.items():
        with open(os.path.join(folder, name), "wb") as file:
            file.write(data)
    return {os.path.join(folder, name): reason for name, (_, reason) in files.items()}


def _zeroed(data: bytes, start: int, stop: int) -> bytes:
    return data[:start] + bytes(stop - start) + data[stop:]


def write_tar(path, samples) -> None:
    """samples: (key, {extension: bytes}) pairs, written in order."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def direct_embeddings(images=None, texts=None):
    """Unit embeddings from the tiny model's ordinary forward pass (no jobs code): (image, text) float32 arrays."""
    import dualclip  # noqa: F401
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(dualclip.TINY_MODEL_PATH).eval()
    processor = AutoProcessor.from_pretrained(dualclip.TINY_MODEL_PATH)
    image_embeds = text_embeds = None
    with torch.no_grad():
        if images is not None:
            pixels = processor(images=[PIL.Image.open(p) if isinstance(p, str) else p for p in images],
                               return_tensors="pt")["pixel_values"]
            features = model.get_image_features(pixel_values=pixels).pooler_output
            image_embeds = torch.nn.functional.normalize(features, dim=-1).numpy()
        if texts is not None:
            tokens = processor(text=list(texts), padding=True, return_tensors="pt")
            features = model.get_text_features(input_ids=tokens["input_ids"],
                                               attention_mask=tokens["attention_mask"]).pooler_output
            text_embeds = torch.nn.functional.normalize(features, dim=-1).numpy()
    return image_embeds, text_embeds


def read_shards(folder, suffix: str):
    """Concatenated `NNNNN.<suffix>` arrays (npy) or tables (parquet) of an output folder, in shard order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(name for name in os.listdir(folder) if name[:1].isdigit() and name.endswith("." + suffix))
    if suffix == "parquet":
        return pa.concat_tables([pq.read_table(os.path.join(folder, name)) for name in names]).to_pylist()
    return np.concatenate([np.load(os.path.join(folder, name)) for name in names])


def folder_bytes(folder) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, name))}

"""`search`: the nearest items of an index for texts, image files or raw embeddings, with their metadata."""

from __future__ import annotations

import os

import numpy as np

from .index import read_index_info

__all__ = ["search", "query_vectors"]

_TINY_NAME = "embedded tiny-digits model"


def _model_for(info: dict, model, device):
    from .model import load_job_model

    identity = info["model"]
    name = model if model is not None else (None if identity["name"] == _TINY_NAME else identity["name"])
    job_model = load_job_model(name, device)
    if job_model.identity["config_sha256"] != identity["config_sha256"] or (
        job_model.identity["weights_fingerprint"] != identity["weights_fingerprint"]
    ):
        raise ValueError(f"the index was built from embeddings of {identity['name']}; {job_model.identity['name']} "
                         "is a different model, and its queries would not match")
    return job_model


def query_vectors(info: dict, texts=None, images=None, embeddings=None, model=None, device=None) -> np.ndarray:
    """Unit-length float32 query vectors from texts, image files/arrays, or an embedding array / .npy file."""
    import torch

    from .decoding import load_image
    from .model import image_features, normalized, text_features

    given = [name for name, value in (("texts", texts), ("images", images), ("embeddings", embeddings))
             if value is not None]
    if len(given) != 1:
        raise ValueError("give exactly one kind of query: texts, images or embeddings")
    if embeddings is not None:
        vectors = np.load(embeddings) if isinstance(embeddings, (str, os.PathLike)) else np.asarray(embeddings)
        vectors = np.atleast_2d(vectors).astype(np.float32)
        if vectors.shape[1] != info["dim"]:
            raise ValueError(f"query embeddings have dimension {vectors.shape[1]}; the index holds {info['dim']}")
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    job_model = _model_for(info, model, device)
    processor, torch_model = job_model.processor, job_model.model
    with torch.inference_mode():
        if texts is not None:
            tokens = processor.tokenizer(list(texts), padding="longest", truncation=True, return_tensors="pt")
            features = text_features(torch_model, tokens["input_ids"].to(job_model.device),
                                     tokens["attention_mask"].to(job_model.device))
        else:
            decoded = []
            for image in images:
                opened, reason = load_image(image)
                if reason is not None:
                    raise ValueError(f"query image {image}: {reason}")
                decoded.append(opened)
            pixels = processor.image_processor(images=decoded, return_tensors="pt")["pixel_values"]
            features = image_features(torch_model, pixels.to(job_model.device, job_model.dtype))
    return normalized(features).cpu().numpy()


def _metadata(folder: str, ids: np.ndarray) -> dict:
    """`id -> row dict` for the wanted ids, reading only the matching rows of the shards' metadata."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    wanted = np.unique(ids[ids >= 0])
    if not len(wanted):
        return {}
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                   if name.endswith(".parquet") and name[:1].isdigit())
    table = ds.dataset(files, format="parquet").to_table(filter=pc.field("id").isin(wanted))
    return {row["id"]: row for row in table.to_pylist()}


def search(index_folder, *, texts=None, images=None, embeddings=None, k: int = 10, nprobe: int | None = None,
           model=None, device=None) -> list[list[dict]]:
    """For each query, the `k` best items: dicts with `rank`, `id`, `score` (cosine similarity), `path`,
    `caption`, `label`, `key`. `model` defaults to the model that made the embeddings (its folder must exist)."""
    import faiss

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    folder = os.path.abspath(os.fspath(index_folder))
    info = read_index_info(folder)
    queries = query_vectors(info, texts, images, embeddings, model, device)
    index = faiss.read_index(os.path.join(folder, "index.faiss"))
    if info["kind"] == "compressed":
        faiss.extract_index_ivf(index).nprobe = nprobe or info["nprobe"]
    scores, ids = index.search(np.ascontiguousarray(queries), min(k, index.ntotal))
    rows = _metadata(info["embeddings"], ids)
    results = []
    for query_scores, query_ids in zip(scores, ids):
        hits = []
        for rank, (score, item) in enumerate(zip(query_scores, query_ids), 1):
            if item < 0:
                continue
            row = rows.get(int(item), {})
            hits.append({"rank": rank, "id": int(item), "score": float(score), "path": row.get("path"),
                         "caption": row.get("caption"), "label": row.get("label"), "key": row.get("key")})
        results.append(hits)
    return results

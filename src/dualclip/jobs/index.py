"""`index`: a FAISS index over a finished embedding folder, exact or compressed depending on size and memory.

The choice follows autofaiss' idea: an exact inner-product index (`IDMap2,Flat`) when the vectors fit the memory
budget and the collection is small enough for brute force (at most `EXACT_MAX` vectors); otherwise an inverted file
with product quantization (`IVF{nlist},PQ{m}`), `nlist` about the square root of the collection and the largest code
(`m` bytes per vector, `m` dividing the dimension) that fits the budget. Vectors are unit length, so inner product is
cosine similarity. FAISS ids are the embedding folder's `id` column, which `search` maps back to paths and captions.

The index folder holds `index.faiss` and `index.json` (kind, factory string, count, default `nprobe`, the embedding
folder and its model).
"""

from __future__ import annotations

import json
import math
import os
import re
import time

import numpy as np

from .output import atomic_write, read_manifest, write_json

__all__ = ["build_index", "choose_index", "parse_size", "embedding_shards", "EXACT_MAX"]

EXACT_MAX = 1_000_000
INDEX_TYPES = ("auto", "exact", "compressed")
DEFAULT_MAX_MEMORY = "4GB"


def parse_size(size) -> int:
    """`4GB`, `512MB`, `1.5G`, `300000` -> bytes (powers of 1024)."""
    if isinstance(size, (int, float)):
        return int(size)
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?B)?\s*", str(size), re.IGNORECASE)
    if match is None:
        raise ValueError(f"cannot read {size!r} as a size: use e.g. 512MB, 4GB or a number of bytes")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** "_KMGT".index(unit or "_"))


def _gigabytes(count: int) -> str:
    return f"{count / 1024**3:.2f} GiB" if count >= 1024**3 else f"{count / 1024**2:.1f} MiB"


def choose_index(count: int, dim: int, max_memory: int, index_type: str = "auto") -> dict:
    """The index for `count` vectors of `dim` within `max_memory` bytes: a dict with `kind`, `factory`, `nlist`,
    `m`, `nprobe`, `bytes` (the estimated size) and `why`."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
    exact_bytes = count * (4 * dim + 8)
    fits = exact_bytes <= max_memory
    if index_type == "exact" or (index_type == "auto" and fits and count <= EXACT_MAX):
        why = (f"{count} vectors x {dim} float32 = {_gigabytes(exact_bytes)}, within the budget of "
               f"{_gigabytes(max_memory)}" if index_type == "auto" else "asked for")
        return {"kind": "exact", "factory": "IDMap2,Flat", "nlist": None, "m": None, "nbits": None, "nprobe": None,
                "bytes": exact_bytes, "why": why}
    nlist = max(1, min(2 ** round(math.log2(max(1.0, math.sqrt(count)))), count // 39 or 1))
    nbits = max(1, min(8, int(math.log2(max(2, count // 39)))))  # PQ needs about 39 training points per centroid
    for divisor in (4, 8, 16, 32, 64):
        m = dim // divisor
        if m < 1 or dim % m:
            continue
        size = count * (math.ceil(m * nbits / 8) + 8) + nlist * dim * 4 + (2**nbits) * dim * 4
        if size <= max_memory:
            why = (f"exact would take {_gigabytes(exact_bytes)}" + ("" if fits else " (over the budget)")
                   + f" for {count} vectors; PQ{m} codes take {_gigabytes(size)}") if index_type == "auto" else \
                "asked for"
            return {"kind": "compressed", "factory": f"IVF{nlist},PQ{m}x{nbits}", "nlist": nlist, "m": m,
                    "nbits": nbits, "nprobe": max(1, min(nlist, nlist // 16 or 1)), "bytes": size, "why": why}
    raise ValueError(f"{count} vectors of dimension {dim} do not fit in {_gigabytes(max_memory)} even compressed "
                     f"to {dim // 64 or 1} bytes each; raise --max-memory")


def _finished(folder: str, modality: str):
    """The manifest and output folder of a finished `dualclip embed` folder that holds `modality` embeddings."""
    from .output import OutputFolder

    manifest = read_manifest(folder)
    if manifest.get("job") != "embed":
        raise ValueError(f"{folder} is the output of `dualclip {manifest.get('job')}`, not of `dualclip embed`")
    if modality not in manifest["modalities"]:
        raise ValueError(f"{folder} holds {' and '.join(manifest['modalities'])} embeddings, no {modality} embeddings")
    output = OutputFolder(folder, manifest["shards"])
    unfinished = output.unfinished()
    if unfinished:
        raise ValueError(f"{folder} is not finished: {len(unfinished)} of {manifest['shards']} shards still to do; "
                         "rerun the same `dualclip embed` command first")
    return manifest, output


def embedding_shards(folder: str, modality: str):
    """`(ids, vectors)` per shard of a finished embedding folder, vectors as float32."""
    import pyarrow.parquet as pq

    manifest, output = _finished(folder, modality)
    for shard in range(manifest["shards"]):
        ids = pq.read_table(output.file(shard, "parquet"), columns=["id"])["id"].to_numpy()
        vectors = np.load(output.file(shard, f"{modality}.npy")).astype(np.float32)
        yield ids.astype(np.int64), vectors


def _count(folder: str, modality: str) -> tuple[int, int]:
    manifest, output = _finished(folder, modality)
    total = sum(output.done_record(shard)["rows"] for shard in range(manifest["shards"]))
    return total, manifest["model"]["projection_dim"]


def _training_sample(folder: str, modality: str, count: int, size: int) -> np.ndarray:
    """`size` rows spread evenly over the collection (deterministic), read shard by shard."""
    wanted = np.unique(np.linspace(0, count - 1, num=min(size, count)).astype(np.int64))
    parts, offset = [], 0
    for _, vectors in embedding_shards(folder, modality):
        local = wanted[(wanted >= offset) & (wanted < offset + len(vectors))] - offset
        parts.append(vectors[local])
        offset += len(vectors)
    return np.ascontiguousarray(np.concatenate(parts))


def build_index(embeddings, output=None, *, modality: str | None = None, max_memory=DEFAULT_MAX_MEMORY,
                index_type: str = "auto", threads: int | None = None) -> dict:
    """Builds the index of a finished `dualclip embed` folder; returns `index.json`'s contents (+ `seconds`)."""
    import faiss

    folder = os.path.abspath(os.fspath(embeddings))
    manifest = read_manifest(folder)
    modality = modality or manifest["modalities"][0]
    output = os.path.abspath(output) if output else os.path.join(folder, f"{modality}-index")
    if threads:
        faiss.omp_set_num_threads(threads)
    count, dim = _count(folder, modality)
    if count == 0:
        raise ValueError(f"{folder} holds no {modality} embeddings")
    plan = choose_index(count, dim, parse_size(max_memory), index_type)
    start = time.perf_counter()
    index = faiss.index_factory(dim, plan["factory"], faiss.METRIC_INNER_PRODUCT)
    if hasattr(index, "do_polysemous_training"):
        index.do_polysemous_training = False  # on by default from index_factory; 20x the training time, unused here
    if not index.is_trained:
        train = _training_sample(folder, modality, count, max(256 * 64, plan["nlist"] * 64))
        index.train(train)
        del train
    for ids, vectors in embedding_shards(folder, modality):
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors), ids)
    os.makedirs(output, exist_ok=True)
    atomic_write(os.path.join(output, "index.faiss"), lambda path: faiss.write_index(index, path))
    info = {"embeddings": folder, "modality": modality, "count": int(index.ntotal), "dim": dim, **plan,
            "max_memory": parse_size(max_memory), "model": manifest["model"], "metric": "inner product (cosine)"}
    atomic_write(os.path.join(output, "index.json"), write_json(info))
    return {**info, "folder": output, "seconds": time.perf_counter() - start}


def read_index_info(folder: str) -> dict:
    path = os.path.join(folder, "index.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} has no index.json: build it with `dualclip index EMBEDDINGS`")
    with open(path) as file:
        return json.load(file)

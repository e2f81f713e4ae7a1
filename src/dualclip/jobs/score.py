"""`score`: the cosine similarity of every image-caption pair of a table or webdataset, LAION-style filtering.

Each output shard is `NNNNN.parquet` (id, path, caption, label, key, similarity); once every shard is finished,
`keep_above=T` writes `kept.parquet` with the pairs whose similarity is at least T (LAION-400M kept CLIP ViT-B/32
similarities >= 0.3). The threshold only filters finished scores: rerunning with another threshold rewrites
`kept.parquet` without computing anything again.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .common import prepare_job, report, write_metadata
from .output import atomic_write, write_json
from .runner import run_shards
from .sources import DEFAULT_SHARD_SIZE

__all__ = ["score", "write_kept"]

KEPT = "kept.parquet"


def score(data, output, model=None, *, keep_above: float | None = None, batch_size: int = 256,
          shard_size: int = DEFAULT_SHARD_SIZE, workers: int | None = None, dtype: str = "auto", device=None,
          progress: bool | None = None, rank=None, world_size=None, path_column=None, caption_column=None,
          split=None) -> dict:
    """Scores every (image, caption) pair of `data` into the folder `output`; returns a summary dict."""
    settings = {"batch_size": batch_size, "similarity": "cosine"}
    setup, _, _ = prepare_job(
        "score", data, output, model, settings=settings, shard_size=shard_size, device=device, dtype=dtype,
        rank=rank, world_size=world_size, modality="both",
        source_options=dict(path_column=path_column, caption_column=caption_column, split=split),
    )
    folder = setup.folder

    def write_shard(result) -> None:
        if result.rows:
            similarity = np.einsum("nd,nd->n", result.features["image"], result.features["text"]).astype(np.float32)
        else:
            similarity = np.zeros(0, np.float32)
        folder.commit(result.shard, {"parquet": write_metadata(result.rows, {"similarity": similarity})}, {
            "shard": result.shard,
            "input": setup.source.shard_input(result.shard),
            "rows": len(result.rows),
            "failures": [{key: f[key] for key in ("id", "path", "reason")} for f in result.failures],
        })

    stats = run_shards(setup.job_model, setup.source, setup.pending, images=True, texts=True, batch_size=batch_size,
                       workers=workers, on_shard=write_shard, progress=progress, description="pairs")
    finished = folder.finish(None if keep_above is None else lambda f: write_kept(f, keep_above))
    message = report("score", setup, stats, finished, "pairs")
    if finished and keep_above is not None:
        with open(os.path.join(folder.path, "kept.json")) as file:
            kept = json.load(file)
        message += f"\nkept {kept['kept']} of {kept['scored']} pairs with similarity >= {keep_above}: {kept['file']}"
    return {"folder": folder.path, "items": stats.items, "failures": stats.failures, "shards": stats.shards,
            "skipped_shards": len(setup.owned) - len(setup.pending), "finished": finished,
            "items_per_second": stats.items_per_second, "wait_fraction": stats.wait_fraction, "message": message}


def write_kept(folder, threshold: float) -> None:
    """`kept.parquet`: the rows of every shard with similarity >= `threshold`, in input order, one row group per
    shard (streamed: one shard in memory at a time); `kept.json`: the threshold and the counts."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    counts = {"scored": 0, "kept": 0}

    def write(path):
        writer = None
        try:
            for shard in range(folder.num_shards):
                table = pq.read_table(folder.file(shard, "parquet"))
                counts["scored"] += table.num_rows
                kept = table.filter(pc.greater_equal(table["similarity"], threshold))
                counts["kept"] += kept.num_rows
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema, compression="zstd")
                writer.write_table(kept)
        finally:
            if writer is not None:
                writer.close()

    target = os.path.join(folder.path, KEPT)
    atomic_write(target, write)
    summary = {"threshold": threshold, **counts, "file": target}
    atomic_write(os.path.join(folder.path, "kept.json"), write_json(summary))

"""`embed`: images and/or captions of a dataset -> a sharded, resumable folder of unit-length embeddings.

Each output shard holds `NNNNN.image.npy` / `NNNNN.text.npy` (`(rows, dim)`, float16 or float32, row i belongs
to row i of the metadata) and `NNNNN.parquet` (id, path, caption, label, key); see `dualclip.jobs.output`.
"""

from __future__ import annotations

from .common import prepare_job, report, write_metadata, write_npy
from .runner import run_shards
from .sources import DEFAULT_SHARD_SIZE

__all__ = ["embed"]

OUTPUT_DTYPES = ("float16", "float32")


def embed(data, output, model=None, *, modality: str = "auto", batch_size: int = 256,
          shard_size: int = DEFAULT_SHARD_SIZE, output_dtype: str = "float16", workers: int | None = None,
          dtype: str = "auto", device=None, progress: bool | None = None, rank=None, world_size=None,
          path_column=None, caption_column=None, label_column=None, split=None) -> dict:
    """Embeds `data` (see `dualclip.jobs.sources.open_source`) into the folder `output`; returns a summary dict.

    Rerunning the same call skips finished shards and gives byte-identical files; a rerun with another model,
    preprocessing, dtype, batch size or input is refused. Under `accelerate launch`/`torchrun` each process
    embeds its own shards.
    """
    import numpy as np

    if output_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"output dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {output_dtype!r}")
    settings = {"output_dtype": output_dtype, "batch_size": batch_size, "normalized": True}
    setup, images, texts = prepare_job(
        "embed", data, output, model, settings=settings, shard_size=shard_size, device=device, dtype=dtype,
        rank=rank, world_size=world_size, modality=modality,
        source_options=dict(path_column=path_column, caption_column=caption_column, label_column=label_column,
                            split=split),
    )
    folder, dim = setup.folder, setup.job_model.dim

    def write_shard(result) -> None:
        writers = {}
        for name, used in (("image", images), ("text", texts)):
            if used:
                values = result.features.get(name, np.zeros((0, dim), np.float32))
                writers[f"{name}.npy"] = write_npy(values.astype(output_dtype))
        writers["parquet"] = write_metadata(result.rows)
        folder.commit(result.shard, writers, {
            "shard": result.shard,
            "input": setup.source.shard_input(result.shard),
            "rows": len(result.rows),
            "failures": [{key: f[key] for key in ("id", "path", "reason")} for f in result.failures],
        })

    stats = run_shards(setup.job_model, setup.source, setup.pending, images=images, texts=texts,
                       batch_size=batch_size, workers=workers, on_shard=write_shard, progress=progress,
                       description="images" if images else "texts")
    finished = folder.finish()
    return {"folder": folder.path, "items": stats.items, "failures": stats.failures, "shards": stats.shards,
            "skipped_shards": len(setup.owned) - len(setup.pending), "finished": finished,
            "items_per_second": stats.items_per_second, "wait_fraction": stats.wait_fraction,
            "message": report("embed", setup, stats, finished, "images" if images else "texts")}

"""Setting up a streaming job: source, model, manifest, output folder, this process's shards; and the summary."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from .distributed import owned_shards, process_position
from .model import JobModel, load_job_model
from .output import OutputFolder
from .sources import DEFAULT_SHARD_SIZE, Source, open_source

__all__ = ["JobSetup", "prepare_job", "resolve_modalities", "write_metadata"]

MODALITIES = ("auto", "image", "text", "both")


def resolve_modalities(modality: str, source: Source) -> tuple[bool, bool]:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if modality == "auto":
        return source.has_images, source.has_captions
    images, texts = modality in ("image", "both"), modality in ("text", "both")
    if images and not source.has_images:
        raise ValueError(f"{source.location} has no images to embed")
    if texts and not source.has_captions:
        raise ValueError(f"{source.location} has no captions to embed (name the column with --caption-column)")
    return images, texts


@dataclass
class JobSetup:
    source: Source
    job_model: JobModel
    folder: OutputFolder
    rank: int
    world_size: int
    owned: list
    pending: list


def _versions() -> dict:
    import torch
    import transformers

    from .. import __version__

    return {"dualclip": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def prepare_job(job: str, data, output, model=None, *, settings: dict, shard_size: int = DEFAULT_SHARD_SIZE,
                source_options: dict | None = None, device=None, dtype: str = "auto", rank=None, world_size=None,
                modality: str = "auto") -> tuple[JobSetup, bool, bool]:
    """Opens the input and the model, creates or checks the output folder, and lists this process's pending shards."""
    _require_pyarrow()
    source = open_source(data, shard_size, **(source_options or {}))
    images, texts = resolve_modalities(modality, source)
    rank, world_size = process_position(rank, world_size)
    job_model = load_job_model(model, device, dtype)
    manifest = {
        "job": job,
        "model": job_model.identity,
        "preprocessing": job_model.preprocessing() if images else None,
        "compute_dtype": str(job_model.dtype).removeprefix("torch."),
        "input": source.describe(),
        "modalities": [name for name, used in (("image", images), ("text", texts)) if used],
        "shards": source.num_shards,
        **settings,
        "created_with": _versions(),
    }
    folder = OutputFolder(output, source.num_shards)
    folder.open(manifest)
    owned = owned_shards(source.num_shards, rank, world_size)
    pending = [shard for shard in owned if not folder.is_done(shard)]
    folder.clean(pending)
    return JobSetup(source, job_model, folder, rank, world_size, owned, pending), images, texts


def _require_pyarrow() -> None:
    # Imported before any work: a missing pyarrow fails now, not after a shard's worth of compute, and its memory
    # is part of the job's from the start instead of appearing mid-run.
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("dataset jobs write parquet metadata and need pyarrow: pip install 'dualclip[jobs]'") from None
    # Arrow initialises its allocator and writers on first use (about 50 MiB): do it before the model runs.
    pq.write_table(pa.table({"id": pa.array([0], pa.int64())}), pa.BufferOutputStream(), compression="zstd")


def write_npy(array: np.ndarray):
    def write(path):
        with open(path, "wb") as file:  # a file object: np.save would add ".npy" to the temporary name
            np.save(file, array)

    return write


def write_metadata(rows: list, extra: dict | None = None):
    """A parquet writer for shard metadata: id, path, caption, label, key (+ `extra` columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "id": pa.array([row["id"] for row in rows], pa.int64()),
        "path": pa.array([row["path"] for row in rows], pa.string()),
        "caption": pa.array([row["caption"] for row in rows], pa.string()),
        "label": pa.array([row["label"] for row in rows], pa.int64()),
        "key": pa.array([row["key"] for row in rows], pa.string()),
    }
    for name, values in (extra or {}).items():
        columns[name] = pa.array(values)
    table = pa.table(columns)

    def write(path):
        pq.write_table(table, path, compression="zstd")

    return write


def report(job: str, setup: JobSetup, stats, finished: bool, unit: str) -> str:
    skipped = len(setup.owned) - len(setup.pending)
    who = f"process {setup.rank} of {setup.world_size}: " if setup.world_size > 1 else ""
    lines = [
        f"{who}{job}: {stats.items} {unit} in {stats.shards} shard{'s' * (stats.shards != 1)} "
        f"({stats.items_per_second:.1f} {unit}/s, {stats.wait_fraction:.0%} of the time waiting for input)"
        + (f", {skipped} finished shard{'s' * (skipped != 1)} skipped" if skipped else "")
        + (f", {stats.failures} failed (see {os.path.join(setup.folder.path, 'failures.jsonl')})"
           if stats.failures else "")
    ]
    if finished:
        count = setup.folder.num_shards
        lines.append(f"{setup.folder.path}: all {count} shards finished" if count > 1 else
                     f"{setup.folder.path}: its shard is finished")
    else:
        lines.append(f"{setup.folder.path}: {len(setup.folder.unfinished())} shards still to do by other processes")
    return "\n".join(lines)


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr)

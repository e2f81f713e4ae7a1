"""The loop every streaming job shares: batches from the workers -> model features -> whole shards, in order."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .model import JobModel, image_features, normalized, text_features, warn_if_not_digits
from .sources import Source
from .stream import BatchStream, default_workers, make_loader

__all__ = ["ShardResult", "run_shards", "Stats"]


@dataclass
class ShardResult:
    """A finished shard: `rows` (metadata dicts, in input order, usable items only), `features` (`"image"` /
    `"text"` -> float32 `(len(rows), dim)` unit rows), `failures` (in input order)."""

    shard: int
    rows: list
    features: dict
    failures: list


@dataclass
class Stats:
    items: int = 0
    failures: int = 0
    shards: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0  # the main process waiting for the next batch: input-bound when large
    shard_results: list = field(default_factory=list)

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def wait_fraction(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0


class _ShardBuffer:
    def __init__(self, shard: int, total: int):
        self.shard, self.total, self.seen = shard, total, 0
        self.rows, self.failures, self.features = [], [], {}

    def add(self, batch: dict, features: dict) -> None:
        self.rows.extend(batch["rows"])
        self.failures.extend(batch["failures"])
        for name, values in features.items():
            self.features.setdefault(name, []).append((batch["rows"][0]["position"], values))
        self.seen += len(batch["rows"]) + len(batch["failures"])

    @property
    def complete(self) -> bool:
        return self.seen >= self.total

    def result(self) -> ShardResult:
        self.rows.sort(key=lambda row: row["position"])
        self.failures.sort(key=lambda failure: failure["position"])
        features = {}
        for name, parts in self.features.items():
            parts.sort(key=lambda part: part[0])  # batches cover disjoint, increasing position ranges
            features[name] = np.concatenate([values for _, values in parts])
        return ShardResult(self.shard, self.rows, features, self.failures)


def _max_text_length(job_model: JobModel) -> int:
    limit = job_model.processor.tokenizer.model_max_length
    positions = getattr(job_model.model.config.text_config, "max_position_embeddings", None)
    return min(limit, positions) if positions else limit


def run_shards(job_model: JobModel, source: Source, shards: list[int], *, images: bool, texts: bool,
               batch_size: int, workers: int | None, on_shard, progress: bool | None = None,
               description: str = "items") -> Stats:
    """Computes the features of `shards` and calls `on_shard(ShardResult)` as each one completes."""
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    if not shards:
        return Stats()
    stream = BatchStream(source, shards, batch_size, images, texts, job_model.processor.image_processor,
                         job_model.processor.tokenizer, _max_text_length(job_model))
    model, device, dtype = job_model.model, job_model.device, job_model.dtype
    loader = make_loader(stream, workers, pin_memory=device.type == "cuda")
    sizes = [source.shard_size(shard) for shard in shards]
    total = sum(sizes) if all(size is not None for size in sizes) else None
    bar = _progress_bar(total, description, progress)
    stats, buffers = Stats(), {}
    start = time.perf_counter()
    batches = iter(loader)
    with torch.inference_mode():
        while True:
            waited = time.perf_counter()
            batch = next(batches, None)
            stats.wait_seconds += time.perf_counter() - waited
            if batch is None:
                break
            warn_if_not_digits(job_model, batch["image_size"])
            features = {}
            if images and batch.get("pixel_values") is not None:
                pixels = batch["pixel_values"].to(device, dtype, non_blocking=True)
                features["image"] = normalized(image_features(model, pixels)).cpu().numpy()
            if texts and batch.get("input_ids") is not None:
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                features["text"] = normalized(text_features(model, ids, mask)).cpu().numpy()
            shard = batch["shard"]
            buffer = buffers.get(shard) or buffers.setdefault(shard, _ShardBuffer(shard, batch["total"]))
            buffer.add(batch, features)
            stats.items += len(batch["rows"])
            stats.failures += len(batch["failures"])
            if bar is not None:
                bar.update(len(batch["rows"]) + len(batch["failures"]))
            if buffer.complete:
                on_shard(buffers.pop(shard).result())
                stats.shards += 1
    stats.seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    if buffers:  # cannot happen unless a source changed under the job
        raise RuntimeError(f"shards {sorted(buffers)} ended incomplete: did the input change while the job ran?")
    return stats


def _progress_bar(total, description: str, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=" " + description, unit_scale=True, dynamic_ncols=True, smoothing=0.1)

"""Input shards -> model-ready batches, decoded and preprocessed in DataLoader workers.

Each shard is cut into batches of `batch_size` records (the last batch of a shard may be shorter; batches never
span shards), so the batches, and with them the numbers, do not depend on the number of processes or workers.
Worker `w` of `W` takes batches `w, w + W, ...` of that sequence. Every batch says which shard it belongs to, the
shard's size and the positions it covers; the main process puts rows back in place by position, so arrival order
does not matter.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .decoding import load_image
from .sources import Record, Source

__all__ = ["BatchStream", "make_loader"]


class BatchStream(IterableDataset):
    """Yields one dict per batch: `shard`, `total` (items in the shard), `rows` (metadata of the usable items, in
    position order, each with its `position`), `failures` (`position`, `id`, `path`, `reason`), and the model
    inputs of the usable items: `pixel_values` and/or `input_ids` + `attention_mask`; `image_size`: the (width,
    height) of the first decoded image."""

    def __init__(self, source: Source, shards: list[int], batch_size: int, images: bool, texts: bool,
                 image_processor=None, tokenizer=None, max_length: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.source, self.shards, self.batch_size = source, list(shards), batch_size
        self.images, self.texts = images, texts
        self.image_processor, self.tokenizer, self.max_length = image_processor, tokenizer, max_length

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        counter = 0
        try:
            for shard in self.shards:
                records = self.source.records(shard)
                starts = range(0, len(records), self.batch_size) if records else [0]
                for start in starts:
                    if counter % workers == worker:
                        yield self._batch(shard, len(records), start, records[start : start + self.batch_size])
                    counter += 1
        finally:
            self.source.close()

    def _batch(self, shard: int, total: int, start: int, records: list[Record]) -> dict:
        rows, failures, images, captions = [], [], [], []
        for position, record in enumerate(records, start):
            reason, image = None, None
            try:
                record = self.source.load(record)
            except Exception as error:  # an unreadable tar member, a broken dataset row
                reason = f"cannot read the item: {type(error).__name__}: {error}"
            if reason is None and self.texts and not record.caption:
                reason = "no caption"
            if reason is None and self.images:
                image, reason = load_image(record.image)
            if reason is not None:
                failures.append({"position": position, "id": record.id, "path": record.path, "reason": reason})
                continue
            rows.append({"position": position, "id": record.id, "path": record.path, "caption": record.caption,
                         "label": record.label, "key": record.key})
            images.append(image)
            captions.append(record.caption)
        batch = {"shard": shard, "total": total, "rows": rows, "failures": failures, "image_size": None}
        if self.images:
            batch["image_size"] = images[0].size if images else None
            pixels = self._preprocess(images, rows, failures)
            captions = [row["caption"] for row in rows]
            batch["pixel_values"] = pixels
        if self.texts:
            batch["input_ids"] = batch["attention_mask"] = None
            if captions:
                tokens = self.tokenizer(captions, padding="longest", truncation=True, max_length=self.max_length,
                                        return_tensors="pt")
                batch["input_ids"], batch["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
        return batch

    def _preprocess(self, images: list, rows: list, failures: list):
        """The batch's pixel values; an image the processor rejects is moved from `rows` to `failures`."""
        if not images:
            return None
        try:
            return self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        except Exception:
            pass
        kept, pixels = [], []
        for row, image in zip(list(rows), images):
            try:
                pixels.append(self.image_processor(images=image, return_tensors="pt")["pixel_values"][0])
                kept.append(row)
            except Exception as error:
                failures.append({"position": row["position"], "id": row["id"], "path": row["path"],
                                 "reason": f"cannot preprocess the image: {type(error).__name__}: {error}"})
        rows[:] = kept
        return torch.stack(pixels) if pixels else None


def _init_worker(_):
    # Decoding is the workers' job; one thread each leaves the cores to the model in the main process.
    torch.set_num_threads(1)


def make_loader(stream: BatchStream, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_init_worker if workers else None,
        prefetch_factor=4 if workers else None,
        pin_memory=pin_memory,
        collate_fn=_keep,
    )


def _keep(batch):
    return batch


def default_workers() -> int:
    """One decoding worker per spare core of this process's share of the machine (at most 8)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, cores // max(local, 1) - 1))

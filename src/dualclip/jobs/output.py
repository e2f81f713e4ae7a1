"""A job's output folder: manifest, atomically written shards, resume, and the finishing step.

```
out/
  manifest.json          what made the folder (job, model + config hash, preprocessing, dtypes, input); a rerun
                         with different settings is refused
  00000.image.npy        one output shard per input shard: data files first, each written under a temporary
  00000.text.npy         name and renamed into place...
  00000.parquet
  00000.done.json        ...then this record (rows, failures, file hashes): the shard counts as finished only
                         once it exists. A rerun skips finished shards and redoes the others.
  failures.jsonl         written when every shard is finished: each skipped item with its reason
```
Several processes can share a folder: each writes only the shards it owns (see `dualclip.jobs.distributed`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import socket

__all__ = ["OutputFolder", "atomic_write", "read_manifest", "write_json"]

MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"
#: Manifest keys that describe the run but do not change its numbers; they may differ on resume.
INFORMATIONAL = ("created_with", "notes")


def _temporary_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp-{socket.gethostname()}-{os.getpid()}")


def atomic_write(path: str, write) -> None:
    """`write(temporary_path)` then rename into `path`: readers see the old file or the whole new one."""
    temporary = _temporary_name(path)
    try:
        write(temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(data) -> callable:
    def write(path):
        with open(path, "w") as file:
            json.dump(data, file, indent=1, sort_keys=True, default=str)
            file.write("\n")

    return write


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OutputFolder:
    def __init__(self, path, num_shards: int):
        self.path = os.path.abspath(os.fspath(path))
        self.num_shards = num_shards
        self.width = max(5, len(str(num_shards - 1)))

    def name(self, shard: int) -> str:
        return str(shard).zfill(self.width)

    def file(self, shard: int, suffix: str) -> str:
        return os.path.join(self.path, f"{self.name(shard)}.{suffix}")

    def open(self, manifest: dict) -> None:
        """Creates the folder and its manifest, or checks that the existing manifest asks for the same numbers."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise FileExistsError(f"{self.path} exists and is not a folder")
        os.makedirs(self.path, exist_ok=True)
        target = os.path.join(self.path, MANIFEST)
        if not os.path.exists(target):
            if os.listdir(self.path):
                stray = [name for name in os.listdir(self.path) if not name.startswith(".")]
                if stray:
                    raise FileExistsError(
                        f"{self.path} is not empty and has no {MANIFEST}: it was not made by a dualclip job; "
                        "choose a new output folder"
                    )
            temporary = _temporary_name(target)
            write_json(manifest)(temporary)
            try:  # link() never replaces: when several processes start at once, the first manifest wins
                os.link(temporary, target)
            except FileExistsError:
                pass
            finally:
                os.remove(temporary)
        with open(target) as file:
            existing = json.load(file)
        differences = _differences(existing, json.loads(json.dumps(manifest, default=str)))
        if differences:
            raise ValueError(
                f"{self.path} holds the output of a run with other settings, so it cannot be resumed with these:\n  "
                + "\n  ".join(differences)
                + "\nrerun with the original settings, or write to a new output folder"
            )

    def is_done(self, shard: int) -> bool:
        return os.path.isfile(self.file(shard, "done.json"))

    def done_record(self, shard: int) -> dict:
        with open(self.file(shard, "done.json")) as file:
            return json.load(file)

    def clean(self, shards) -> None:
        """Removes leftovers of killed runs for `shards` (shards this process owns, so no one else writes them)."""
        for shard in shards:
            pattern = os.path.join(self.path, f".{self.name(shard)}.*.tmp-*")
            for path in glob.glob(pattern):
                os.remove(path)

    def commit(self, shard: int, writers: dict, record: dict) -> None:
        """Writes each `suffix -> write(path)` file atomically, then the shard's done record (the commit point)."""
        hashes = {}
        for suffix, write in writers.items():
            path = self.file(shard, suffix)
            atomic_write(path, write)
            hashes[os.path.basename(path)] = sha256_file(path)
        atomic_write(self.file(shard, "done.json"), write_json({**record, "files": hashes}))

    def unfinished(self) -> list[int]:
        return [shard for shard in range(self.num_shards) if not self.is_done(shard)]

    def finish(self, extra=None) -> bool:
        """When every shard is finished: writes `failures.jsonl` (and whatever `extra(folder)` writes). Any process
        may get here; the files are written atomically and come out the same, so finishing twice is harmless."""
        if self.unfinished():
            return False
        failures = []
        for shard in range(self.num_shards):
            failures.extend(self.done_record(shard).get("failures", []))

        def write(path):
            with open(path, "w") as file:
                for failure in failures:
                    file.write(json.dumps(failure, sort_keys=True) + "\n")

        atomic_write(os.path.join(self.path, FAILURES), write)
        if extra is not None:
            extra(self)
        return True


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in INFORMATIONAL:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            lines.append(f"{prefix}{key}: was {json.dumps(a, default=str)}, now {json.dumps(b, default=str)}")
    return lines


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: not an output folder of a dualclip job")
    with open(path) as file:
        return json.load(file)

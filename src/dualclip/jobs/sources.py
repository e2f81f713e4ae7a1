"""Dataset inputs for the jobs, read as a sequence of input shards whose records are listed cheaply and loaded lazily.

`open_source(spec)` picks the reader from the spec:

| spec | reader | one input shard is |
|---|---|---|
| a folder | every image file below it (recursive, sorted); labels from the first subfolder level | `shard_size` files |
| `paths.txt` / `.lst` | one local image path per line (relative to the file's folder) | `shard_size` lines |
| `.csv` `.tsv` `.jsonl` `.parquet` | a table: a path and/or a caption column (and a label) | `shard_size` rows |
| `data/{00000..00099}.tar`, `*.tar` | webdataset tar shards (`key.jpg` + `key.txt` / `key.cls`) | one tar |
| a folder saved by `datasets` | `Dataset.save_to_disk` / `DatasetDict.save_to_disk` | `shard_size` rows |

Only local files are read: URLs are refused. Every record has an `id` that is stable across runs and process
counts: the row number in the input (folder listing, list file, table, dataset) or, for tar shards,
`tar_number * 2**32 + position_in_tar`.

A source is picklable (DataLoader workers receive it) and opens files lazily inside each process.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "IMAGE_EXTENSIONS",
    "Record",
    "Source",
    "expand_braces",
    "open_source",
    "refuse_url",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".jfif")
TABLE_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".parquet")
LIST_EXTENSIONS = (".txt", ".lst")
PATH_COLUMNS = ("path", "image", "image_path", "filepath", "file", "filename")
CAPTION_COLUMNS = ("caption", "text", "txt", "prompt")
LABEL_COLUMNS = ("label", "labels", "class", "cls")
TAR_CAPTION_EXTENSIONS = ("txt", "text", "caption")
DEFAULT_SHARD_SIZE = 10_000
TAR_ID_STRIDE = 2**32

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^pipe:")


@dataclass
class Record:
    """One item of an input shard. `image` is a local path, bytes, or a source-specific handle that
    `Source.load` turns into one of those; `caption`/`label` may likewise be filled in by `load`."""

    id: int
    path: str = ""
    caption: str | None = None
    label: int | None = None
    key: str | None = None
    image: Any = None
    handle: Any = field(default=None, repr=False)


def refuse_url(text: str, what: str = "input") -> None:
    if isinstance(text, str) and _URL.match(text):
        raise ValueError(
            f"{what} {text!r} is a URL: dualclip jobs read local files only. Download the data first "
            "(e.g. img2dataset turns a URL table into local webdataset shards) and pass the local copy."
        )


def expand_braces(pattern: str) -> list[str]:
    """`data/{00000..00002}.tar` -> three names (zero padding kept); `{a,b}` lists; several braces multiply."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        width = len(first) if first.startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    else:
        choices = body.split(",")
    return [name for choice in choices for name in expand_braces(head + choice + tail)]


class Source:
    """Base class: `num_shards`, `shard_size(i)` (None when unknown before reading), `records(i)`, `load(record)`,
    `describe()` (what the manifest records; changes to it refuse a resume). `classes`: label names, if any."""

    kind = "?"
    classes: list[str] | None = None
    has_images = True
    has_captions = False

    @property
    def num_shards(self) -> int:
        raise NotImplementedError

    def shard_size(self, shard: int) -> int | None:
        return None

    def shard_input(self, shard: int) -> str:
        return self.location

    def records(self, shard: int) -> list[Record]:
        raise NotImplementedError

    def load(self, record: Record) -> Record:
        return record

    def describe(self) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __getstate__(self):
        state = dict(self.__dict__)
        for name in [key for key in state if key.startswith("_open")]:
            state[name] = None
        return state


class _ChunkedSource(Source):
    """Rows 0..count-1 split into shards of `shard_size` rows; ids are row numbers."""

    def __init__(self, location: str, count: int, shard_size: int):
        if shard_size < 1:
            raise ValueError(f"shard size must be at least 1, got {shard_size}")
        self.location, self.count, self.rows_per_shard = location, count, shard_size

    @property
    def num_shards(self) -> int:
        return max(1, -(-self.count // self.rows_per_shard))

    def shard_size(self, shard: int) -> int:
        return max(0, min(self.count, (shard + 1) * self.rows_per_shard) - shard * self.rows_per_shard)

    def row_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.rows_per_shard
        return start, start + self.shard_size(shard)

    def shard_input(self, shard: int) -> str:
        start, stop = self.row_range(shard)
        return f"{self.location} rows {start}-{stop - 1}" if stop > start else f"{self.location} (empty)"


def _digest(lines) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()[:16]


class FolderSource(_ChunkedSource):
    kind = "folder"

    def __init__(self, root: str, shard_size: int):
        root = os.path.abspath(root)
        paths = []
        for folder, subfolders, files in os.walk(root, followlinks=True):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            paths.extend(
                os.path.relpath(os.path.join(folder, name), root)
                for name in files
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
            )
        paths.sort()
        if not paths:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
        super().__init__(root, len(paths), shard_size)
        self.paths = paths
        top = [path.split(os.sep, 1)[0] if os.sep in path else None for path in paths]
        self.classes = sorted(set(top)) if all(name is not None for name in top) else None
        self._class_index = {name: i for i, name in enumerate(self.classes or [])}

    def records(self, shard: int) -> list[Record]:
        start, stop = self.row_range(shard)
        records = []
        for index in range(start, stop):
            relative = self.paths[index]
            label = self._class_index[relative.split(os.sep, 1)[0]] if self.classes else None
            full = os.path.join(self.location, relative)
            records.append(Record(id=index, path=full, label=label, image=full))
        return records

    def describe(self) -> dict:
        return {"kind": self.kind, "location": self.location, "count": self.count, "shard_size": self.rows_per_shard,
                "listing_sha256": _digest(self.paths)}


def _file_signature(path: str) -> dict:
    stat = os.stat(path)
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class _LineOffsetsSource(_ChunkedSource):
    """A text file read as records: a first pass stores each shard's byte offset so shard k starts with a seek."""

    def _index(self, path: str, shard_size: int, parse_rows) -> None:
        """`parse_rows(lines)` yields one parsed row per record from an iterator of decoded lines."""
        offsets, count, consumed = [], 0, [0]
        with open(path, "rb") as file:
            def lines():
                for raw in file:
                    consumed[0] += len(raw)
                    yield raw.decode("utf-8")

            offsets.append(0)
            self._prologue(lines)
            offsets[0] = consumed[0]
            for row in parse_rows(lines()):
                self._observe(row, count)
                count += 1
                if count % shard_size == 0:
                    offsets.append(consumed[0])
        self.offsets = offsets
        _ChunkedSource.__init__(self, os.path.abspath(path), count, shard_size)

    def _prologue(self, lines) -> None:
        pass

    def _observe(self, row, index: int) -> None:
        pass

    def _rows(self, shard: int, parse_rows):
        with open(self.location, "rb") as file:
            file.seek(self.offsets[shard])
            rows = parse_rows(raw.decode("utf-8") for raw in file)
            for _ in range(self.shard_size(shard)):
                yield next(rows)


class ListSource(_LineOffsetsSource):
    kind = "list"

    def __init__(self, path: str, shard_size: int):
        self.location = os.path.abspath(path)
        self._index(path, shard_size, self._parse)
        if self.count == 0:
            raise ValueError(f"{path} lists no image paths")
        self.folder = os.path.dirname(self.location)

    @staticmethod
    def _parse(lines):
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line

    def _observe(self, row, index: int) -> None:
        if index == 0:
            refuse_url(row, f"the first path in {self.location},")

    def records(self, shard: int) -> list[Record]:
        start, _ = self.row_range(shard)
        return [
            Record(id=start + i, path=_resolve(self.folder, line), image=_resolve(self.folder, line))
            for i, line in enumerate(self._rows(shard, self._parse))
        ]

    def describe(self) -> dict:
        return {"kind": self.kind, "location": self.location, "count": self.count, "shard_size": self.rows_per_shard,
                **_file_signature(self.location)}


def _resolve(folder: str, path: str) -> str:
    if _URL.match(path):
        return path  # left as is: loading it records a failure
    return os.path.normpath(os.path.join(folder, os.path.expanduser(path)))


def _pick_column(columns, wanted: str | None, candidates, what: str, location: str):
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{location} has no column {wanted!r} for the {what} (columns: {', '.join(columns)})")
        return wanted
    lowered = {str(name).lower(): name for name in columns}
    return next((lowered[name] for name in candidates if name in lowered), None)


class _TableColumns:
    """Column choice shared by CSV/JSONL/parquet tables."""

    def _choose_columns(self, columns, path_column, caption_column, label_column) -> None:
        location = self.location
        self.path_column = _pick_column(columns, path_column, PATH_COLUMNS, "image path", location)
        self.caption_column = _pick_column(columns, caption_column, CAPTION_COLUMNS, "caption", location)
        self.label_column = _pick_column(columns, label_column, LABEL_COLUMNS, "label", location)
        if self.path_column is None and self.caption_column is None:
            raise ValueError(
                f"{location} has neither an image path column ({', '.join(PATH_COLUMNS)}) nor a caption column "
                f"({', '.join(CAPTION_COLUMNS)}); name them with --path-column / --caption-column "
                f"(columns: {', '.join(map(str, columns))})"
            )
        self.has_images = self.path_column is not None
        self.has_captions = self.caption_column is not None
        self.folder = os.path.dirname(self.location)
        self._labels = set()

    def _observe_row(self, row: dict, index: int) -> None:
        if index == 0 and self.path_column is not None:
            refuse_url(str(row.get(self.path_column) or ""), f"the first image path in {self.location},")
        if self.label_column is not None and row.get(self.label_column) not in (None, ""):
            self._labels.add(row[self.label_column])

    def _finish_labels(self) -> None:
        labels = self._labels
        del self._labels
        if self.label_column is None or not labels:
            self.classes, self._class_index = None, {}
            return
        if all(isinstance(value, int) or (isinstance(value, str) and value.isdigit()) for value in labels):
            numbers = sorted({int(value) for value in labels})
            self.classes = [str(n) for n in range(numbers[-1] + 1)]
        else:
            self.classes = sorted(str(value) for value in labels)
        self._class_index = {name: i for i, name in enumerate(self.classes)}

    def _record(self, index: int, row: dict) -> Record:
        path = row.get(self.path_column) if self.path_column else None
        path = _resolve(self.folder, str(path)) if path not in (None, "") else ""
        caption = row.get(self.caption_column) if self.caption_column else None
        label = row.get(self.label_column) if self.label_column else None
        if label in (None, ""):
            label = None
        else:
            label = self._class_index.get(str(int(label)) if _is_int(label) else str(label))
        return Record(id=index, path=path, caption=None if caption is None else str(caption), label=label,
                      image=path or None)

    def _columns_description(self) -> dict:
        return {"path_column": self.path_column, "caption_column": self.caption_column,
                "label_column": self.label_column}


def _is_int(value) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and value.isdigit())


class TextTableSource(_TableColumns, _LineOffsetsSource):
    """CSV / TSV (header row) or JSON lines."""

    def __init__(self, path: str, shard_size: int, path_column=None, caption_column=None, label_column=None):
        self.kind = "jsonl" if path.lower().endswith(".jsonl") else "csv"
        self.delimiter = "\t" if path.lower().endswith(".tsv") else ","
        self.location = os.path.abspath(path)
        self._wanted = (path_column, caption_column, label_column)
        self._index(path, shard_size, self._parse)
        if not hasattr(self, "path_column"):
            raise ValueError(f"{path} holds no rows")
        self._finish_labels()

    def _prologue(self, lines) -> None:
        if self.kind == "csv":
            header = next(csv.reader(lines(), delimiter=self.delimiter), None)
            if not header:
                raise ValueError(f"{self.location} is empty (no header row)")
            self.fieldnames = header
            self._choose_columns(header, *self._wanted)

    def _parse(self, lines):
        if self.kind == "csv":
            for values in csv.reader(lines, delimiter=self.delimiter):
                if values:
                    yield dict(zip(self.fieldnames, values))
        else:
            for line in lines:
                if line.strip():
                    yield json.loads(line)

    def _observe(self, row, index: int) -> None:
        if index == 0 and self.kind == "jsonl":
            self._choose_columns(list(row), *self._wanted)
        self._observe_row(row, index)

    def records(self, shard: int) -> list[Record]:
        start, _ = self.row_range(shard)
        return [self._record(start + i, row) for i, row in enumerate(self._rows(shard, self._parse))]

    def describe(self) -> dict:
        return {"kind": self.kind, "location": self.location, "count": self.count, "shard_size": self.rows_per_shard,
                **self._columns_description(), **_file_signature(self.location)}


class ParquetSource(_TableColumns, _ChunkedSource):
    kind = "parquet"

    def __init__(self, path: str, shard_size: int, path_column=None, caption_column=None, label_column=None):
        import pyarrow.parquet as pq

        self.location = os.path.abspath(path)
        parquet = pq.ParquetFile(self.location)
        self._choose_columns(parquet.schema_arrow.names, path_column, caption_column, label_column)
        _ChunkedSource.__init__(self, self.location, parquet.metadata.num_rows, shard_size)
        self.group_starts = [0]
        for group in range(parquet.metadata.num_row_groups):
            self.group_starts.append(self.group_starts[-1] + parquet.metadata.row_group(group).num_rows)
        index = 0
        for batch in parquet.iter_batches(columns=self._columns()):
            for row in batch.to_pylist():
                self._observe_row(row, index)
                index += 1
        self._finish_labels()

    def _columns(self) -> list[str]:
        return [name for name in (self.path_column, self.caption_column, self.label_column) if name is not None]

    def records(self, shard: int) -> list[Record]:
        import pyarrow.parquet as pq

        start, stop = self.row_range(shard)
        groups = [g for g in range(len(self.group_starts) - 1)
                  if self.group_starts[g] < stop and self.group_starts[g + 1] > start]
        if not groups:
            return []
        table = pq.ParquetFile(self.location).read_row_groups(groups, columns=self._columns())
        offset = start - self.group_starts[groups[0]]
        rows = table.slice(offset, stop - start).to_pylist()
        return [self._record(start + i, row) for i, row in enumerate(rows)]

    def describe(self) -> dict:
        return {"kind": self.kind, "location": self.location, "count": self.count, "shard_size": self.rows_per_shard,
                **self._columns_description(), **_file_signature(self.location)}


_TAR_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


class WebDatasetSource(Source):
    """webdataset tar shards: members grouped by key (name up to the first dot); each tar is one input shard."""

    kind = "webdataset"

    def __init__(self, tars: list[str], spec: str):
        self.tars = [os.path.abspath(path) for path in tars]
        self.location = spec
        self._open = None
        # What the samples hold, judged from the first tar's first members (a missing part is a per-item failure).
        extensions = set()
        with tarfile.open(self.tars[0], "r:*") as tar:
            for count, member in enumerate(tar):
                match = _TAR_NAME.match(member.name)
                if match:
                    extensions.add(match.group(2).lower())
                if count >= 200:
                    break
        self.has_images = any("." + extension in IMAGE_EXTENSIONS for extension in extensions)
        self.has_captions = any(extension in TAR_CAPTION_EXTENSIONS for extension in extensions)

    @property
    def num_shards(self) -> int:
        return len(self.tars)

    def shard_input(self, shard: int) -> str:
        return self.tars[shard]

    def _tar(self, shard: int) -> tarfile.TarFile:
        if self._open is None or self._open[0] != shard:
            self.close()
            self._open = (shard, tarfile.open(self.tars[shard], "r:*"))
        return self._open[1]

    def records(self, shard: int) -> list[Record]:
        tar = self._tar(shard)
        samples: dict[str, dict] = {}
        for member in tar:  # headers only: a seekable tar skips over member data
            if not member.isfile():
                continue
            match = _TAR_NAME.match(member.name)
            if match is None or os.path.basename(member.name).startswith("."):
                continue
            key, extension = match.group(1), match.group(2).lower()
            samples.setdefault(key, {})[extension] = member
        records = []
        base = shard * TAR_ID_STRIDE
        for position, (key, members) in enumerate(samples.items()):
            image = next((members[e] for e in members if "." + e in IMAGE_EXTENSIONS), None)
            caption = next((members[e] for e in TAR_CAPTION_EXTENSIONS if e in members), None)
            label = members.get("cls")
            path = f"{self.tars[shard]}/{image.name if image is not None else key}"
            records.append(Record(id=base + position, path=path, key=key, image=image,
                                  handle=(shard, caption, label)))
        return records

    def load(self, record: Record) -> Record:
        shard, caption, label = record.handle
        tar = self._tar(shard)

        def read(member):
            return tar.extractfile(member).read()

        return replace(
            record,
            image=read(record.image) if record.image is not None else None,
            caption=read(caption).decode("utf-8").strip() if caption is not None else None,
            label=int(read(label).decode("utf-8").strip()) if label is not None else None,
            handle=None,
        )

    def describe(self) -> dict:
        return {"kind": self.kind, "location": self.location,
                "tars": [{"path": path, **_file_signature(path)} for path in self.tars]}

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None


class HFDatasetSource(_ChunkedSource):
    """A `datasets` dataset saved with `save_to_disk` (a `DatasetDict` needs `split`)."""

    kind = "datasets"

    def __init__(self, folder: str, shard_size: int, split=None, image_column=None, caption_column=None,
                 label_column=None):
        self.folder, self.split = os.path.abspath(folder), split
        dataset = self._dataset()
        features = dataset.features
        import datasets

        images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
        self.image_column = _pick_column(list(features), image_column, (), "image", folder) or (
            images[0] if images else None)
        strings = [name for name, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        self.caption_column = _pick_column(list(features), caption_column, CAPTION_COLUMNS, "caption", folder)
        if self.caption_column is None and caption_column is None:
            self.caption_column = next((name for name in strings if name.lower() in CAPTION_COLUMNS), None)
        labels = [name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
        self.label_column = _pick_column(list(features), label_column, LABEL_COLUMNS, "label", folder)
        if self.label_column is None and labels:
            self.label_column = labels[0]
        label_feature = features.get(self.label_column) if self.label_column else None
        self.classes = list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else None
        if self.image_column is None and self.caption_column is None:
            raise ValueError(f"the dataset in {folder} has no image column and no caption column "
                             f"(features: {', '.join(features)})")
        self.has_images = self.image_column is not None
        self.has_captions = self.caption_column is not None
        location = folder + (f" [{split}]" if split else "")
        super().__init__(location, len(dataset), shard_size)
        self._open = None

    def _dataset(self):
        import datasets

        loaded = datasets.load_from_disk(self.folder)
        if isinstance(loaded, datasets.DatasetDict):
            if self.split is None:
                if len(loaded) != 1:
                    raise ValueError(f"{self.folder} holds the splits {', '.join(loaded)}: choose one with --split")
                self.split = next(iter(loaded))
            if self.split not in loaded:
                raise ValueError(f"{self.folder} has no split {self.split!r} (splits: {', '.join(loaded)})")
            loaded = loaded[self.split]
        elif self.split is not None:
            raise ValueError(f"{self.folder} holds one dataset without splits; leave out --split")
        if getattr(self, "image_column", None):
            loaded = loaded.cast_column(self.image_column, datasets.Image(decode=False))
        return loaded

    def records(self, shard: int) -> list[Record]:
        start, stop = self.row_range(shard)
        return [Record(id=index, path=f"{self.folder}#{index}", handle=index) for index in range(start, stop)]

    def load(self, record: Record) -> Record:
        if self._open is None:
            self._open = self._dataset()
        row = self._open[record.handle]
        image = row[self.image_column] if self.image_column else None
        path = record.path
        if isinstance(image, dict):
            path = image.get("path") or path
            image = image.get("bytes") or image.get("path")
        label = row[self.label_column] if self.label_column else None
        if label is not None and self.classes is None:
            label = int(label) if _is_int(label) else None
        caption = row[self.caption_column] if self.caption_column else None
        return replace(record, path=path, image=image, caption=caption, label=label, handle=None)

    def describe(self) -> dict:
        return {"kind": self.kind, "location": self.folder, "split": self.split, "count": self.count,
                "shard_size": self.rows_per_shard, "image_column": self.image_column,
                "caption_column": self.caption_column, "label_column": self.label_column,
                "fingerprint": self._fingerprint()}

    def _fingerprint(self):
        dataset = self._open if self._open is not None else self._dataset()
        return getattr(dataset, "_fingerprint", None)


def _is_saved_dataset(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in ("dataset_info.json", "dataset_dict.json",
                                                                      "state.json"))


def open_source(spec, shard_size: int = DEFAULT_SHARD_SIZE, *, path_column=None, caption_column=None,
                label_column=None, split=None) -> Source:
    """The reader for `spec` (see the module docstring); raises `ValueError`/`FileNotFoundError` with the reason."""
    spec = os.fspath(spec)
    refuse_url(spec)
    if "{" in spec or spec.lower().endswith(".tar") or (any(c in spec for c in "*?[") and ".tar" in spec.lower()):
        tars = []
        for name in expand_braces(spec):
            matches = sorted(glob.glob(name)) if any(c in name for c in "*?[") else [name]
            tars.extend(matches)
        missing = [name for name in tars if not os.path.isfile(name)]
        if not tars or missing:
            raise FileNotFoundError(f"tar shard not found: {missing[0] if missing else spec}"
                                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return WebDatasetSource(tars, spec)
    if os.path.isdir(spec):
        if _is_saved_dataset(spec):
            return HFDatasetSource(spec, shard_size, split, None, caption_column, label_column)
        return FolderSource(spec, shard_size)
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"input not found: {spec}")
    lowered = spec.lower()
    columns = dict(path_column=path_column, caption_column=caption_column, label_column=label_column)
    if lowered.endswith(".parquet"):
        return ParquetSource(spec, shard_size, **columns)
    if lowered.endswith((".csv", ".tsv", ".jsonl")):
        return TextTableSource(spec, shard_size, **columns)
    if lowered.endswith(LIST_EXTENSIONS):
        return ListSource(spec, shard_size)
    raise ValueError(
        f"cannot tell what {spec} is: give a folder of images, a list of paths (.txt), a table "
        f"({', '.join(TABLE_EXTENSIONS)}), webdataset tars (data/{{00000..00009}}.tar) or a folder saved by datasets"
    )

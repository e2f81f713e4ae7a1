"""Atomic output: a converted folder appears complete under its name, or not at all.

Everything is written into a temporary folder beside OUT (same filesystem, so the final rename is atomic) and
renamed into place only once complete; on any error, or Ctrl-C, the temporary folder is removed. An existing OUT is
replaced only when asked, and only after the new folder is complete.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging as hf_logging

from .errors import ConversionError


def check_output(out, overwrite: bool, sources=()) -> Path:
    """Validates OUT before any work: raises `FileExistsError` if it exists (without `overwrite`) or is a file, and
    `ConversionError` if it is, contains or lies inside one of `sources`."""
    out = Path(out).absolute()
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise FileExistsError(f"{out} exists and is not a folder; choose another output path")
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    for source in sources:
        source = Path(source).absolute()
        if out == source or out in source.parents or source in out.parents:
            raise ConversionError(f"the output folder {out} must be outside the source {source}")
    return out


@contextmanager
def staged_output(out, overwrite: bool):
    """Yields a fresh temporary folder beside `out`; moves it to `out` when the block completes without error."""
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield staging
        _apply_umask(staging)
        _move_into_place(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _apply_umask(folder: Path) -> None:
    # mkdtemp (and some writers) create private files; the result should look like any folder the user creates.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _move_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    if not overwrite:  # appeared while we were converting
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".previous", dir=out.parent))
    os.rename(out, previous / out.name)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(previous / out.name, out)
        raise
    finally:
        if out.exists():
            shutil.rmtree(previous, ignore_errors=True)


@contextmanager
def transformers_progress_bars(enabled: bool):
    """Shows or hides transformers' own progress bars (saving shards, loading weights) inside the block."""
    were_enabled = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if were_enabled else hf_logging.disable_progress_bar)()


def save_model(model, folder, max_shard_size, progress: bool = False) -> None:
    """`save_pretrained` into `folder`: config.json, safetensors weights (sharded above `max_shard_size`, with an
    index, as transformers does), and for dualclip models the code files for `trust_remote_code` loading."""
    try:
        with transformers_progress_bars(progress):
            model.save_pretrained(folder, max_shard_size=max_shard_size)
    except ValueError as error:
        raise ConversionError(f"could not save the model: {error}") from None

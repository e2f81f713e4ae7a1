"""Safe checkpoint reading: nothing stored in a checkpoint is ever executed.

- safetensors files are read lazily, one tensor at a time;
- pickles (`.pt`, `.pth`, `.bin`) go through `torch.load(weights_only=True)`, whose unpickler only rebuilds tensors
  and plain containers; a pickle that asks for anything else (a function to call, a class to build) is refused;
- TorchScript archives (OpenAI's released `.pt` files) are opened with `torch.jit.load` only to take the tensors of
  `state_dict()`; no method of the scripted module is run.

Zip-based files (new-style pickles and TorchScript archives) have their CRC checked first, because `torch.load`
reads a corrupted archive without complaint.
"""

import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from .errors import ConversionError

# Entries of an OpenAI TorchScript archive's state dict that are plain numbers, not weights.
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
_CRC_CHUNK = 1 << 22
# safetensors dtype codes of floating-point tensors.
_SAFETENSORS_FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


class TensorSource:
    """The tensors of a checkpoint, by name: held in memory, or read lazily from one or more safetensors files.

    `shape(name)` never reads data; `pop(name)` hands a tensor over and forgets it, so that a converter popping as it
    goes holds at most one source tensor beyond what it has already converted.
    """

    def __init__(self, tensors: dict | None = None, safetensors_paths=()):
        self._tensors = dict(tensors or {})
        self._lazy: dict[str, tuple] = {}  # name -> (handle, shape, dtype code)
        for path in safetensors_paths:
            try:
                handle = safe_open(os.fspath(path), framework="pt")
                for name in handle.keys():
                    view = handle.get_slice(name)
                    self._lazy[name] = (handle, tuple(view.get_shape()), view.get_dtype())
            except SafetensorError as error:
                raise ConversionError(f"{path} is truncated or corrupt: {error}") from None

    def keys(self) -> list[str]:
        return [*self._tensors, *self._lazy]

    def __contains__(self, name: str) -> bool:
        return name in self._tensors or name in self._lazy

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._lazy:
            return self._lazy[name][1]
        return tuple(self._tensors[name].shape)

    def float_dtypes(self) -> set[torch.dtype]:
        """The dtypes of the floating-point tensors (from the headers, for safetensors)."""
        dtypes = {t.dtype for t in self._tensors.values() if t.is_floating_point()}
        lazy = {_SAFETENSORS_FLOAT_DTYPES.get(code) for _, _, code in self._lazy.values()}
        return dtypes | (lazy - {None})

    def put(self, name: str, tensor: torch.Tensor) -> None:
        """Holds `tensor` under `name` (a tensor a converter derived from others it popped)."""
        self._lazy.pop(name, None)
        self._tensors[name] = tensor

    def pop(self, name: str) -> torch.Tensor:
        if name in self._tensors:
            return self._tensors.pop(name)
        handle = self._lazy.pop(name)[0]
        try:
            return handle.get_tensor(name)
        except SafetensorError as error:
            raise ConversionError(f"cannot read tensor {name!r}: {error} (truncated or corrupt file?)") from None


@dataclass
class Checkpoint:
    """What was read from one checkpoint file.

    Attributes:
        tensors: the weights, module prefixes (`module.` from DDP) already stripped.
        format: `"torchscript"`, `"pickle"` or `"safetensors"`.
        path: the file read.
        metadata: non-tensor entries found beside the weights (the training checkpoint's `epoch`, OpenAI's
            `input_resolution`, ...); informational only.
        wrapped: whether the weights sat under a `state_dict` key (an OpenCLIP training checkpoint).
        had_module_prefix: whether every key started with `module.` (saved from a DDP-wrapped model).
    """

    tensors: TensorSource
    format: str
    path: Path
    metadata: dict = field(default_factory=dict)
    wrapped: bool = False
    had_module_prefix: bool = False


def _check_zip(path: Path, progress: bool) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ConversionError(f"{path} is truncated or corrupt: its zip directory cannot be read") from None
    members = archive.infolist()
    total = sum(member.file_size for member in members)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="Checking archive", disable=not progress, leave=False)
    with bar:
        for member in members:
            try:
                with archive.open(member) as stream:
                    while chunk := stream.read(_CRC_CHUNK):
                        bar.update(len(chunk))
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                raise ConversionError(f"{path} is truncated or corrupt ({member.filename}: {error})") from None
    return archive


def _is_torchscript(archive: zipfile.ZipFile) -> bool:
    return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def _load_torchscript(path: Path) -> tuple[dict, dict]:
    try:
        module = torch.jit.load(os.fspath(path), map_location="cpu")
    except Exception as error:  # TorchScript raises a plain RuntimeError for every kind of damage
        raise ConversionError(f"{path} could not be read as a TorchScript archive: {error}") from None
    state = {name: tensor.detach() for name, tensor in module.state_dict().items()}
    del module
    return state, _pop_openai_metadata(state)


def _load_pickle(path: Path, zip_based: bool) -> object:
    try:
        if not zip_based:
            return torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        # Memory-mapped, nothing is read until used: a training checkpoint's optimizer state never is.
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
        if isinstance(obj, dict) and "state_dict" in obj:
            return obj
        # A plain state dict is read into memory instead: each tensor's memory is freed once it is converted,
        # while the pages of a mapping stay resident until the whole file is unmapped.
        del obj
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = re.search(r"WeightsUnpickler error:\s*([^\n]+?)(?: Please use|\n|$)", str(error))
        raise ConversionError(
            f"{path} was refused by the safe loader (torch.load with weights_only=True): it holds more than "
            f"tensors and plain containers, such as code to run on loading. Nothing from it was executed."
            + (f" ({reason.group(1).strip()})" if reason else "")
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ConversionError(f"{path} is truncated or corrupt, or not a PyTorch checkpoint: {error}") from None


def _unwrap(obj, path: Path) -> tuple[dict, dict, bool]:
    """(tensors, metadata, wrapped) from a loaded pickle: a state dict, or a training checkpoint holding one."""
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
    wrapped = "state_dict" in obj and isinstance(obj["state_dict"], dict)
    state = obj["state_dict"] if wrapped else obj
    metadata = {k: v for k, v in obj.items() if k != "state_dict" and not torch.is_tensor(v)} if wrapped else {}
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    others = {k: v for k, v in state.items() if not torch.is_tensor(v)}
    if not tensors:
        raise ConversionError(f"{path} holds no tensors")
    metadata.update(_pop_openai_metadata(tensors))
    metadata.update({key: others.pop(key) for key in OPENAI_METADATA_KEYS if key in others})
    if others:
        raise ConversionError(f"{path}: state dict entries that are not tensors: {', '.join(sorted(others))}")
    return tensors, metadata, wrapped


def _pop_openai_metadata(tensors: dict) -> dict:
    """OpenAI's `input_resolution`/`context_length`/`vocab_size` entries (one-number tensors), removed."""
    return {key: int(tensors.pop(key)) for key in OPENAI_METADATA_KEYS if key in tensors and tensors[key].numel() == 1}


def _strip_module_prefix(tensors: dict) -> tuple[dict, bool]:
    if tensors and all(key.startswith("module.") for key in tensors):
        return {key[len("module."):]: value for key, value in tensors.items()}, True
    return tensors, False


def read_checkpoint(path: str | os.PathLike, progress: bool = False) -> Checkpoint:
    """Reads the weights of a checkpoint file without executing anything stored in it.

    Accepts safetensors files, pickled state dicts or training checkpoints (`{"state_dict": ..., "epoch": ...}`,
    with or without DDP's `module.` prefix), and TorchScript archives. Raises `FileNotFoundError` for a missing
    file and `ConversionError` for an unreadable, corrupt, truncated or unsafe one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as stream:
        head = stream.read(9)
    if len(head) < 9:
        raise ConversionError(f"{path} is empty or truncated")

    # A safetensors file starts with its header's length (8 bytes, little-endian) and then the JSON header.
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        return Checkpoint(tensors=TensorSource(safetensors_paths=[path]), format="safetensors", path=path)

    # New-style pickles and TorchScript archives are zip files; a truncated one has lost its zip directory.
    zip_based = head.startswith(b"PK\x03\x04")
    if zip_based:
        with _check_zip(path, progress) as archive:
            torchscript = _is_torchscript(archive)
        if torchscript:
            tensors, metadata = _load_torchscript(path)
            return Checkpoint(tensors=TensorSource(tensors), format="torchscript", path=path, metadata=metadata)
    tensors, metadata, wrapped = _unwrap(_load_pickle(path, zip_based), path)
    tensors, had_prefix = _strip_module_prefix(tensors)
    return Checkpoint(TensorSource(tensors), "pickle", path, metadata, wrapped, had_prefix)


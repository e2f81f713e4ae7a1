"""From source tensors to a dualclip model, one tensor at a time and without a second copy of the weights.

Each source tensor is taken from its checkpoint (`TensorSource.pop`), transformed and cast on its own, and dropped;
the model is built on the meta device and then takes the converted tensors as its parameters (`assign=True`), so
memory holds the unconverted rest of the source plus the converted part, never two full copies.
"""

import torch
from tqdm.auto import tqdm

from .errors import ConversionError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(requested, source_dtypes: set) -> torch.dtype:
    """The output dtype: the one requested, else the source's when all its floating tensors share one, else float32.

    OpenAI's archives mix float16 and float32 tensors, so they convert to float32 unless asked otherwise (float16
    values are exact in float32).
    """
    if requested is None:
        return next(iter(source_dtypes)) if len(source_dtypes) == 1 else torch.float32
    if isinstance(requested, torch.dtype) and requested in DTYPES.values():
        return requested
    if requested in DTYPES:
        return DTYPES[requested]
    raise ConversionError(f"dtype must be one of {', '.join(DTYPES)}; got {requested!r}")


def _transform(tensor: torch.Tensor, transform, name: str) -> torch.Tensor:
    if transform is None:
        return tensor
    if transform == "T":
        if tensor.dim() != 2:
            raise ConversionError(f"{name} should be a matrix, has shape {tuple(tensor.shape)}")
        return tensor.t()
    if transform == "first_row":
        return tensor[:1]
    if transform == "scalar":
        if tensor.numel() != 1:
            raise ConversionError(f"{name} should hold one number, has shape {tuple(tensor.shape)}")
        return tensor.reshape(())
    _, index = transform
    if tensor.shape[0] % 3:
        raise ConversionError(f"{name} should stack q, k and v, but its first dimension is {tensor.shape[0]}")
    return tensor.chunk(3, dim=0)[index]


def _own_storage(result: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    # Views (transposes, q/k/v thirds) must not share storage with each other: safetensors refuses aliased tensors.
    if result is not source and result.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
        return result.clone(memory_format=torch.contiguous_format)
    return result if result.is_contiguous() else result.contiguous()


def convert_tensors(source, plan: dict, dtype: torch.dtype, progress: bool = False) -> dict[str, torch.Tensor]:
    """Applies `plan` (source name -> [(dualclip name, transform)]) to `source`, casting floating tensors to `dtype`.

    Source tensors are popped as they are converted; integer tensors (BatchNorm's `num_batches_tracked`) keep
    their dtype.
    """
    converted = {}
    for name in tqdm(list(plan), desc="Converting tensors", unit="tensor", disable=not progress, leave=False):
        tensor = source.pop(name)
        for target, transform in plan[name]:
            result = _transform(tensor, transform, name)
            if result.is_floating_point():
                result = result.to(dtype)
            converted[target] = _own_storage(result, tensor)
        del tensor
    return converted


def build_model(model_class, config, tensors: dict[str, torch.Tensor]):
    """A `model_class(config)` whose parameters and buffers are `tensors` themselves (no copy), in eval mode.

    Raises `ConversionError` naming missing, unexpected or misshapen tensors.
    """
    with torch.device("meta"):
        model = model_class(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshapen = [
        f"{name} {tuple(tensors[name].shape)} (expected {expected[name]})"
        for name in sorted(set(expected) & set(tensors))
        if tuple(tensors[name].shape) != expected[name]
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", misshapen)):
        if names:
            problems.append(f"{label}: {', '.join(names[:6])}{f' and {len(names) - 6} more' if len(names) > 6 else ''}")
    if problems:
        raise ConversionError(f"the converted weights do not fit {model_class.__name__}: " + "; ".join(problems))
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()

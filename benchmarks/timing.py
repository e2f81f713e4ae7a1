"""Shared benchmark helpers: interleaved warm timing, agreement checks, machine facts, markdown tables."""

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

STUBS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "_stubs")


def import_references():
    """Imports open_clip with the test-only torchvision stand-in (the references import torchvision at import
    time; there is no CPU build of it). transformers decides first, so it never sees the stand-in."""
    from transformers.utils.import_utils import is_torchvision_available

    is_torchvision_available()
    if STUBS not in sys.path:
        sys.path.insert(0, STUBS)
    import open_clip

    return open_clip


def interleaved_medians(contenders: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each contender, measured in alternating order so drift hits all alike."""
    for _ in range(warmup):
        for run in contenders.values():
            run()
    times = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def machine_facts() -> str:
    import transformers

    try:
        open_clip_version = import_references().__version__
    except ImportError:
        open_clip_version = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, open_clip {open_clip_version}, Python {platform.python_version()}"
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def ratio(reference: float | None, ours: float) -> str:
    return "n/a" if reference is None else f"{reference / ours:.2f}x"

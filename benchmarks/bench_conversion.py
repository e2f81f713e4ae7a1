"""Time and peak memory of `dualclip convert` on full-size OpenAI checkpoints and OpenCLIP hub folders.

Usage: python benchmarks/bench_conversion.py [--archs ViT-B/32 ViT-L/14] [--openclip ViT-B-16-SigLIP EVA02-B-16]
                                             [--workdir DIR]
(`--archs` or `--openclip` with no names skips that part.)

Each checkpoint is a plain OpenAI state dict (`.pt`) with random weights, in the released models' dtypes (float16
projections and convolutions, float32 embeddings and LayerNorms), built tensor by tensor. Every conversion runs in a
fresh process of its own: a small wrapper process starts the conversion as its only child and reads that child's
peak resident memory from `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, so the figure covers the whole conversion
(Python, torch and transformers included) and nothing else. The output is float32 (the default for a mixed-dtype
source), about twice the input's size.

Each OpenCLIP source is a hub folder (`open_clip_model.safetensors` + `open_clip_config.json` holding OpenCLIP's
model config for the name and an empty `preprocess_cfg`) with random float32 weights (normal, std 0.02) under every
state-dict name and shape of the named model, read from the model built by `open_clip.create_model` on the meta
device (so no full model is materialised besides the written tensors). Only building the source needs open_clip
(imported behind the test-only torchvision stand-in, as in tests/conftest.py); the conversion process does not
import it. A model whose family dualclip cannot convert yet gets a row with its `ConversionError` message.

The bar: peak RSS below 2.5x the larger of the input and output weights' sizes.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# (vision width, vision layers, patch, image size, embedding size, text width): OpenAI's released sizes.
ARCHITECTURES = {
    "ViT-B/32": (768, 12, 32, 224, 512, 512),
    "ViT-B/16": (768, 12, 16, 224, 512, 512),
    "ViT-L/14": (1024, 24, 14, 224, 768, 768),
}
TEXT_LAYERS, CONTEXT, VOCAB = 12, 77, 49408
LIMIT = 2.5


def _layer_shapes(prefix: str, width: int) -> dict:
    """One OpenAI transformer block (`in_proj` fused q/k/v, QuickGELU MLP of 4x width); float16 where OpenAI's
    `convert_weights` casts (linear layers), float32 for LayerNorms."""
    half, full = torch.float16, torch.float32
    return {
        f"{prefix}.attn.in_proj_weight": ((3 * width, width), half),
        f"{prefix}.attn.in_proj_bias": ((3 * width,), half),
        f"{prefix}.attn.out_proj.weight": ((width, width), half),
        f"{prefix}.attn.out_proj.bias": ((width,), half),
        f"{prefix}.ln_1.weight": ((width,), full),
        f"{prefix}.ln_1.bias": ((width,), full),
        f"{prefix}.mlp.c_fc.weight": ((4 * width, width), half),
        f"{prefix}.mlp.c_fc.bias": ((4 * width,), half),
        f"{prefix}.mlp.c_proj.weight": ((width, 4 * width), half),
        f"{prefix}.mlp.c_proj.bias": ((width,), half),
        f"{prefix}.ln_2.weight": ((width,), full),
        f"{prefix}.ln_2.bias": ((width,), full),
    }


def openai_vit_shapes(name: str) -> dict:
    """Name -> (shape, dtype) of an OpenAI ViT CLIP state dict, as in the released archives."""
    width, layers, patch, image, embed, text_width = ARCHITECTURES[name]
    half, full = torch.float16, torch.float32
    shapes = {
        "positional_embedding": ((CONTEXT, text_width), full),
        "text_projection": ((text_width, embed), half),
        "logit_scale": ((), full),
        "visual.class_embedding": ((width,), full),
        "visual.positional_embedding": (((image // patch) ** 2 + 1, width), full),
        "visual.proj": ((width, embed), half),
        "visual.conv1.weight": ((width, 3, patch, patch), half),
        "visual.ln_pre.weight": ((width,), full),
        "visual.ln_pre.bias": ((width,), full),
        "visual.ln_post.weight": ((width,), full),
        "visual.ln_post.bias": ((width,), full),
        "token_embedding.weight": ((VOCAB, text_width), full),
        "ln_final.weight": ((text_width,), full),
        "ln_final.bias": ((text_width,), full),
    }
    for index in range(layers):
        shapes.update(_layer_shapes(f"visual.transformer.resblocks.{index}", width))
    for index in range(TEXT_LAYERS):
        shapes.update(_layer_shapes(f"transformer.resblocks.{index}", text_width))
    return shapes


def write_checkpoint(name: str, path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, (shape, dtype) in openai_vit_shapes(name).items():
        state[key] = torch.empty(shape, dtype=torch.float32).normal_(0, 0.02, generator=generator).to(dtype)
    torch.save(state, path)


def write_openclip_folder(name: str, folder: Path) -> None:
    """An OpenCLIP hub folder of model `name` with random float32 weights, its names and shapes taken from the model
    built on the meta device."""
    from safetensors.torch import save_file
    from transformers.utils.import_utils import is_torchvision_available

    is_torchvision_available()  # transformers caches "no torchvision" before the stand-in becomes importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "_stubs"))
    import open_clip

    shapes = {key: (value.shape, value.dtype) for key, value in
              open_clip.create_model(name, device="meta").state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.empty(shape).normal_(0, 0.02, generator=generator).to(dtype) for key, (shape, dtype) in
             shapes.items()}
    folder.mkdir()
    save_file(state, folder / "open_clip_model.safetensors")
    config = {"model_cfg": open_clip.get_model_config(name), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))


def measure(command: list[str]) -> dict:
    """Runs `command` as this process's only child: wall time, the child's peak RSS, and the JSON object the child
    prints last (if any)."""
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    if completed.returncode:
        raise SystemExit(completed.stderr[-3000:])
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    unit = 1 if sys.platform == "darwin" else 1024
    lines = completed.stdout.strip().splitlines()
    return {
        "seconds": seconds,
        "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit,
        **(json.loads(lines[-1]) if lines else {}),
    }


CONVERT = """
import json, sys, time
from dualclip.conversion import ConversionError, convert_checkpoint
start = time.perf_counter()
try:
    convert_checkpoint(sys.argv[1], sys.argv[2])
    print(json.dumps({"convert_seconds": time.perf_counter() - start}))
except ConversionError as error:
    print(json.dumps({"error": str(error)}))
"""
IMPORT_ONLY = "import dualclip.conversion, dualclip.modeling_dualclip"


def _child(args) -> None:
    """Wrapper process: measure one command and print the figures as JSON."""
    print(json.dumps(measure([sys.executable, "-c", *args.command])))


def _run_wrapped(code: str, *arguments) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--measure", code, *map(str, arguments)], capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def _weights_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors")) if path.is_dir() else path.stat().st_size


def _convert(label: str, source: Path, out: Path) -> tuple:
    """Converts `source` in a measured process of its own; the row's figures. Deletes both afterwards."""
    figures = _run_wrapped(CONVERT, source, out)
    input_size, output_size = _weights_size(source), (_weights_size(out) if out.exists() else None)
    for path in (source, out):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    ratio = figures["peak_rss"] / max(input_size, output_size) if output_size else None
    return label, input_size, output_size, figures, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="*", default=["ViT-B/32", "ViT-L/14"], choices=list(ARCHITECTURES),
                        help="OpenAI architectures (none: skip)")
    parser.add_argument("--openclip", nargs="*", default=["ViT-B-16-SigLIP", "EVA02-B-16"],
                        help="OpenCLIP model names, converted from hub folders (none: skip)")
    parser.add_argument("--workdir", type=Path, default=None, help="where checkpoints are written (a temp dir)")
    parser.add_argument("--measure", nargs="+", dest="command", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.command:
        return _child(args)

    import transformers

    import dualclip

    workdir = Path(tempfile.mkdtemp(prefix="bench_conversion_", dir=args.workdir))
    baseline = _run_wrapped(IMPORT_ONLY)
    rows = []
    for name in args.archs:
        source, out = workdir / f"{name.replace('/', '-')}.pt", workdir / name.replace("/", "-")
        write_checkpoint(name, source)
        rows.append(_convert(f"{name} (OpenAI .pt, fp16/fp32 mix)", source, out))
    for name in args.openclip:
        source, out = workdir / f"openclip-{name}", workdir / f"dualclip-{name}"
        write_openclip_folder(name, source)
        rows.append(_convert(f"{name} (OpenCLIP hub folder, fp32 safetensors)", source, out))
    workdir.rmdir()

    gib = 2**30
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, torch "
          f"{torch.__version__}, transformers {transformers.__version__}, dualclip {dualclip.__version__}")
    print(f"baseline (importing dualclip.conversion only): peak RSS {baseline['peak_rss'] / gib:.2f} GiB, "
          f"{baseline['seconds']:.1f} s")
    print()
    print("| checkpoint | input | output (safetensors, fp32) | conversion time | process time (with imports) | "
          f"peak RSS | peak RSS / max(input, output) (bar: < {LIMIT}) |")
    print("|---|---|---|---|---|---|---|")
    for label, input_size, output_size, figures, ratio in rows:
        seconds, peak = f"{figures['seconds']:.1f} s", f"{figures['peak_rss'] / gib:.2f} GiB"
        if "error" in figures:
            message = figures["error"].replace("|", "\\|").replace("\n", " ")
            print(f"| {label} | {input_size / gib:.2f} GiB | — | ConversionError: {message} | {seconds} | {peak} | — |")
        else:
            print(f"| {label} | {input_size / gib:.2f} GiB | {output_size / gib:.2f} GiB | "
                  f"{figures['convert_seconds']:.1f} s | {seconds} | {peak} | {ratio:.2f} "
                  f"{'✓' if ratio < LIMIT else '✗'} |")
    if any(ratio is not None and ratio >= LIMIT for *_, ratio in rows):
        raise SystemExit(f"peak RSS above {LIMIT}x the weights")


if __name__ == "__main__":
    main()

"""Time and peak memory of `dualclip convert` on ViT-B/32- and ViT-L/14-size OpenAI checkpoints.

Usage: python benchmarks/bench_conversion.py [--archs ViT-B/32 ViT-L/14] [--workdir DIR]

Each checkpoint is a plain OpenAI state dict (`.pt`) with random weights, in the released models' dtypes (float16
projections and convolutions, float32 embeddings and LayerNorms), built tensor by tensor. Every conversion runs in a
fresh process of its own: a small wrapper process starts the conversion as its only child and reads that child's
peak resident memory from `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, so the figure covers the whole conversion
(Python, torch and transformers included) and nothing else. The output is float32 (the default for a mixed-dtype
source), about twice the input's size.

The bar: peak RSS below 2.5x the larger of the input and output weights' sizes.
"""

import argparse
import json
import os
import platform
import resource
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


def measure(command: list[str]) -> dict:
    """Runs `command` as this process's only child: wall time and the child's peak RSS."""
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
        "convert_seconds": float(lines[-1]) if lines else None,
        "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit,
    }


CONVERT = (
    "import sys, time; from dualclip.conversion import convert_checkpoint; start = time.perf_counter(); "
    "convert_checkpoint(sys.argv[1], sys.argv[2]); print(time.perf_counter() - start)"
)
IMPORT_ONLY = "import dualclip.conversion, dualclip.modeling_dualclip"


def _child(args) -> None:
    """Wrapper process: measure one command and print the figures as JSON."""
    print(json.dumps(measure([sys.executable, "-c", *args.command])))


def _run_wrapped(code: str, *arguments) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--measure", code, *map(str, arguments)], capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def _weights_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["ViT-B/32", "ViT-L/14"], choices=list(ARCHITECTURES))
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
        figures = _run_wrapped(CONVERT, source, out)
        input_size, output_size = source.stat().st_size, _weights_size(out)
        ratio = figures["peak_rss"] / max(input_size, output_size)
        rows.append((name, input_size, output_size, figures["convert_seconds"], figures["seconds"], figures["peak_rss"],
                     ratio))
        source.unlink()
        for file in out.iterdir():
            file.unlink()
        out.rmdir()
    workdir.rmdir()

    gib = 2**30
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, torch "
          f"{torch.__version__}, transformers {transformers.__version__}, dualclip {dualclip.__version__}")
    print(f"baseline (importing dualclip.conversion only): peak RSS {baseline['peak_rss'] / gib:.2f} GiB, "
          f"{baseline['seconds']:.1f} s")
    print()
    print("| checkpoint | input (OpenAI .pt, fp16/fp32 mix) | output (safetensors, fp32) | conversion time | "
          f"process time (with imports) | peak RSS | peak RSS / max(input, output) (bar: < {LIMIT}) |")
    print("|---|---|---|---|---|---|---|")
    for name, input_size, output_size, convert_seconds, seconds, peak, ratio in rows:
        print(f"| {name} | {input_size / gib:.2f} GiB | {output_size / gib:.2f} GiB | {convert_seconds:.1f} s | "
              f"{seconds:.1f} s | {peak / gib:.2f} GiB | {ratio:.2f} {'✓' if ratio < LIMIT else '✗'} |")
    if any(row[-1] >= LIMIT for row in rows):
        raise SystemExit(f"peak RSS above {LIMIT}x the weights")


if __name__ == "__main__":
    main()

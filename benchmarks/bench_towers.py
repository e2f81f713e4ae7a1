"""Image throughput of OpenCLIP image towers: open_clip's `encode_image` vs dualclip's on the same weights (CPU).

    python benchmarks/bench_towers.py --threads 2                          # convnext_base, MobileCLIP-S1, batch 16
    python benchmarks/bench_towers.py --openclip convnext_base MobileCLIP-S1 --batch 16 --rounds 5
    python benchmarks/bench_towers.py --openclip MobileCLIP-S1 --reparameterize   # both FastViTs fused first

Each named OpenCLIP model is built by `open_clip.create_model` at full size (its own random initialisation, fp32),
written as an OpenCLIP hub folder (`open_clip_model.safetensors` + `open_clip_config.json`) and converted with
`dualclip.conversion.convert_checkpoint`, then loaded with `AutoModel.from_pretrained`, so both hold the same
numbers. The image features are checked to agree (unit-normalised, within 1e-5: open_clip's CoCa returns normalised
features from `encode_image`) before anything is timed, and a model whose features disagree gets a row saying so
instead of timings; timings are warm medians of interleaved calls, reported as images per second
of wall time, with dualclip's rate over open_clip's from the same run. Each call's CPU time (the process's, all
threads) is reported too, as images per CPU-second: on a machine shared with other work, wall time also counts the
time the threads waited for a core, CPU time does not. The load average is printed before and after. A model
dualclip cannot convert yet (or open_clip cannot build offline) gets a row with the error instead of figures.

`--reparameterize` times reparameterisable towers (FastViT/MobileCLIP) in their inference-time form on both sides:
open_clip's timm trunk fused by timm's `reparameterize_model`, dualclip's by `vision_model.reparameterize()`, before
the agreement check; other towers are timed as they are.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import import_references, interleaved_medians, machine_facts, markdown_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network: a model that needs the hub fails at once, with a row
AGREEMENT = 1e-5  # max abs difference of the unit-normalised image features
HEADER = ["model", "image tower", "image size", "batch", "OpenCLIP images/s", "dualclip images/s",
          "dualclip / OpenCLIP", "OpenCLIP images/CPU-s", "dualclip images/CPU-s", "dualclip / OpenCLIP (CPU)",
          "difference (unit-norm)"]
WARMUP = 1


def build_pair(name: str, workdir: Path):
    """`(open_clip model, dualclip model, image size)` holding the same weights; raises what conversion raises."""
    from safetensors.torch import save_file
    from transformers import AutoModel

    from dualclip.conversion import convert_checkpoint

    open_clip = import_references()
    torch.manual_seed(0)
    reference = open_clip.create_model(name).eval()
    hub = workdir / f"openclip-{name}"
    hub.mkdir()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, hub / "open_clip_model.safetensors")
    config = {"model_cfg": open_clip.get_model_config(name), "preprocess_cfg": {}}
    (hub / "open_clip_config.json").write_text(json.dumps(config))
    convert_checkpoint(hub, workdir / f"dualclip-{name}")
    ours = AutoModel.from_pretrained(workdir / f"dualclip-{name}").eval()
    return reference, ours, ours.config.vision_config.image_size


def image_tower_name(model) -> str:
    return type(model.vision_model).__name__


def error_row(name: str, batch: int, message: str) -> list[str]:
    message = message if len(message) <= 300 else message[:299] + "…"
    return [name, "—", "—", str(batch), "—", "—", "—", "—", "—", "—", message]


def with_cpu_time(run, samples: list):
    """`run`, recording the process CPU time of each call in `samples`."""

    def timed():
        start = time.process_time()
        result = run()
        samples.append(time.process_time() - start)
        return result

    return timed


def measure(name: str, workdir: Path, batch: int, rounds: int, reparameterize: bool = False) -> list[str]:
    from dualclip.conversion import ConversionError

    try:
        reference, ours, size = build_pair(name, workdir)
    except (ConversionError, OSError, RuntimeError, ValueError, KeyError) as error:  # not convertible / not buildable
        message = " ".join(f"{type(error).__name__}: {error}".split()).replace("|", "\\|")
        return error_row(name, batch, message)
    tower = image_tower_name(ours)
    if reparameterize and hasattr(ours.vision_model, "reparameterize"):
        from timm.utils.model import reparameterize_model

        reparameterize_model(reference.visual.trunk, inplace=True)
        ours.vision_model.reparameterize()
        tower += " (reparameterised)"
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = F.normalize(reference.encode_image(pixels), dim=-1), F.normalize(ours.encode_image(pixels), dim=-1)
        difference = float((got - want).abs().max())
        if difference > AGREEMENT:
            return error_row(name, batch, f"not timed: the image features differ from open_clip's by {difference:.2e}")
        cpu = {"OpenCLIP": [], "dualclip": []}
        contenders = {
            "OpenCLIP": with_cpu_time(lambda: reference.encode_image(pixels), cpu["OpenCLIP"]),
            "dualclip": with_cpu_time(lambda: ours.encode_image(pixels), cpu["dualclip"]),
        }
        medians = interleaved_medians(contenders, rounds, warmup=WARMUP)
    rates = {contender: batch / seconds for contender, seconds in medians.items()}
    cpu_rates = {contender: batch / statistics.median(samples[WARMUP:]) for contender, samples in cpu.items()}
    return [
        name, tower, str(size), str(batch),
        f"{rates['OpenCLIP']:.2f}", f"{rates['dualclip']:.2f}", f"{rates['dualclip'] / rates['OpenCLIP']:.2f}x",
        f"{cpu_rates['OpenCLIP']:.2f}", f"{cpu_rates['dualclip']:.2f}",
        f"{cpu_rates['dualclip'] / cpu_rates['OpenCLIP']:.2f}x", f"{difference:.1e}",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--openclip", nargs="+", default=["convnext_base", "MobileCLIP-S1"],
                        help="OpenCLIP model names")
    parser.add_argument("--batch", type=int, default=16, help="images per call (default 16)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per contender (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--reparameterize", action="store_true",
                        help="time reparameterisable towers (FastViT) fused on both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {machine_facts()}", flush=True)
    print("Load average (1, 5, 15 min) before: {:.2f}, {:.2f}, {:.2f}\n".format(*os.getloadavg()), flush=True)
    rows = []
    for name in args.openclip:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            rows.append(measure(name, Path(workdir), args.batch, args.rounds, args.reparameterize))
        print(markdown_table(HEADER, rows[-1:]).splitlines()[-1] + f"  ({time.perf_counter() - started:.0f} s)",
              flush=True)
    print("\nLoad average (1, 5, 15 min) after: {:.2f}, {:.2f}, {:.2f}\n".format(*os.getloadavg()))
    print(markdown_table(HEADER, rows))


if __name__ == "__main__":
    main()

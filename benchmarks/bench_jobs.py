"""Dataset jobs on the CPU: end-to-end `dualclip embed` throughput against the model alone, peak memory for 2k vs
20k images, and FAISS index build and query for 100k vectors.

    python benchmarks/bench_jobs.py                        # everything (a few minutes on 2 cores)
    python benchmarks/bench_jobs.py --images 2000 20000 --threads 2 --workers 1
    python benchmarks/bench_jobs.py --skip-embed --vectors 100000 --dim 512
    python benchmarks/bench_jobs.py --skip-index --malloc-mmap-threshold 1048576   # flat-memory allocator setting

Embedding: a random ViT image tower (hidden 256, 4 layers, 32x32 input, patch 4: 65 tokens) saved as a model
folder, and 64x64 JPEG files (small images, decoded and resized to 32x32 by the job's DataLoader workers). Each run
is a fresh process running `dualclip embed FOLDER --output OUT --model MODEL --workers W` through the CLI; its
items/s is the job's own count over its streaming loop (worker start-up and the model's first call included), its
peak RSS is `ru_maxrss` of the main process (and of the largest worker). The model-only figure runs the same
model, threads and batch size on pixel tensors already in memory (`encode_image` + normalisation, warm), which is
the ceiling for the job; it is measured just before and just after each job and averaged.

Index: random unit vectors written as a finished embedding folder (float16, 10k-row shards), indexed by
`dualclip.jobs.build_index` in a fresh process each (exact, and compressed IVF-PQ forced), then queried with k=10
by perturbed copies of stored vectors. Memory: resident size sampled every 5 ms during the build.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def make_model(folder: str) -> None:
    from dualclip import DualClipConfig, DualClipImageProcessor, DualClipModel, DualClipProcessor, DualClipTokenizer

    config = DualClipConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                           image_size=32, patch_size=4),
        projection_dim=64,
    )
    import torch

    torch.manual_seed(0)
    DualClipModel(config).save_pretrained(folder)
    processor = DualClipProcessor(DualClipImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False),
                                  DualClipTokenizer())
    processor.save_pretrained(folder)


def make_images(folder: str, count: int) -> None:
    """`count` 64x64 JPEGs (smooth random colour fields, about 2 KB each), 1000 per subfolder."""
    import PIL.Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (256, 8, 8, 3), dtype=np.uint8)
    for index in range(count):
        path = os.path.join(folder, f"{index // 1000:03d}", f"{index:06d}.jpg")
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        small = PIL.Image.fromarray(np.roll(base[index % 256], index // 256, axis=0))
        small.resize((64, 64), PIL.Image.BILINEAR).save(path, quality=90)


def model_only(model_folder: str, images: int, batch_size: int, threads: int) -> float:
    """Images per second of the model alone on preloaded pixel tensors."""
    import torch
    from transformers import AutoModel

    import dualclip  # noqa: F401
    from transformers.utils import logging

    logging.disable_progress_bar()
    torch.set_num_threads(threads)
    model = AutoModel.from_pretrained(model_folder).eval()
    batches = [torch.randn(min(batch_size, images - start), 3, 32, 32) for start in range(0, images, batch_size)]
    with torch.inference_mode():
        torch.nn.functional.normalize(model.encode_image(batches[0]), dim=-1)  # warm-up
        start = time.perf_counter()
        for pixels in batches:
            torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)
        return images / (time.perf_counter() - start)


def data_only(model_folder: str, data: str, batch_size: int, workers: int) -> float:
    """Images per second of the job's data path alone (listing, decoding, preprocessing in `workers` DataLoader
    processes, batches handed to the main process), no model."""
    from dualclip.jobs.sources import open_source
    from dualclip.jobs.stream import BatchStream, make_loader
    from dualclip.zero_shot import load_processor

    processor = load_processor(model_folder)
    source = open_source(data)
    stream = BatchStream(source, list(range(source.num_shards)), batch_size, True, False, processor.image_processor,
                         processor.tokenizer, 77)
    start, count = time.perf_counter(), 0
    for batch in make_loader(stream, workers):
        count += len(batch["rows"])
    return count / (time.perf_counter() - start)


def embed_run(model_folder: str, data: str, output: str, batch_size: int, threads: int, workers: int,
              mmap_threshold: int | None = None) -> dict:
    """One fresh `dualclip embed` process (the CLI); its items/s, wall time and peak RSS."""
    argv = ["embed", data, "--output", output, "--model", model_folder, "--batch-size", str(batch_size),
            "--workers", str(workers), "--no-progress"]
    code = (
        "import json, re, resource, time, contextlib, io, torch\n"
        f"torch.set_num_threads({threads})\n"
        "from dualclip.cli import main\n"
        "start = time.perf_counter()\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    assert main({argv!r}) == 0\n"
        "wall = time.perf_counter() - start\n"
        "match = re.search(r'embed: (\\d+) images in .*\\(([\\d.]+) images/s, (\\d+)% of the time waiting', "
        "out.getvalue())\n"
        "print('RESULT ' + json.dumps({'items': int(match.group(1)), 'items_per_second': float(match.group(2)),\n"
        "    'wait_percent': int(match.group(3)),\n"
        "    'wall_s': wall, 'rss_main_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,\n"
        "    'rss_worker_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if mmap_threshold:  # glibc: blocks this large are mmapped and returned when freed (no heap fragmentation)
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def synthetic_embeddings(folder: str, count: int, dim: int) -> np.ndarray:
    sys.path.insert(0, os.path.join(HERE, "..", "src"))
    from dualclip.jobs.common import write_metadata, write_npy
    from dualclip.jobs.output import OutputFolder

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    shard_size = 10_000
    shards = -(-count // shard_size)
    output = OutputFolder(folder, shards)
    output.open({"job": "embed", "modalities": ["image"], "shards": shards,
                 "model": {"name": "synthetic", "projection_dim": dim}})
    for shard in range(shards):
        part = slice(shard * shard_size, (shard + 1) * shard_size)
        rows = [{"id": i, "path": f"{i}.jpg", "caption": None, "label": None, "key": None}
                for i in range(part.start, min(part.stop, count))]
        output.commit(shard, {"image.npy": write_npy(vectors[part].astype(np.float16)),
                              "parquet": write_metadata(rows)}, {"rows": len(rows), "failures": []})
    return vectors.astype(np.float16).astype(np.float32)


INDEX_STEP = """
import json, resource, sys, time
import numpy as np, faiss
from dualclip.jobs import build_index
from dualclip.jobs.search import search
import os, threading
folder, output, index_type, threads, queries_file = sys.argv[1:6]
page = os.sysconf("SC_PAGE_SIZE") / 2**20
def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * page
peak, done = [rss()], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        done.wait(0.005)
sampler = threading.Thread(target=sample)
before = rss()
sampler.start()
info = build_index(folder, output, index_type=index_type, threads=int(threads))
done.set(); sampler.join()
build_rss = peak[0]
queries = np.load(queries_file)
index = faiss.read_index(output + "/index.faiss")
if info["kind"] == "compressed":
    faiss.extract_index_ivf(index).nprobe = info["nprobe"]
index.search(queries[:1], 10)
start = time.perf_counter()
for row in queries[:100]:
    index.search(row[None], 10)
one = (time.perf_counter() - start) / 100
faiss.omp_set_num_threads(1)
start = time.perf_counter()
for row in queries[:100]:
    index.search(row[None], 10)
one_thread = (time.perf_counter() - start) / 100
faiss.omp_set_num_threads(int(threads))
start = time.perf_counter()
scores, ids = index.search(queries, 10)
batch = time.perf_counter() - start
start = time.perf_counter()
results = search(output, embeddings=queries[:10], k=10)
with_metadata = (time.perf_counter() - start) / 10
np.save(output + "/ids.npy", ids)
print("RESULT " + json.dumps({"kind": info["kind"], "factory": info["factory"], "build_s": info["seconds"],
      "index_mib": __import__("os").path.getsize(output + "/index.faiss") / 2**20, "rss_before_mib": before,
      "rss_peak_mib": build_rss, "query_ms": one * 1000, "query_1thread_ms": one_thread * 1000,
      "batch_ms": batch * 1000, "queries": len(queries),
      "search_with_metadata_ms": with_metadata * 1000, "nprobe": info["nprobe"]}))
"""


def index_run(folder: str, output: str, index_type: str, threads: int, queries_file: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-c", INDEX_STEP, folder, output, index_type, str(threads),
                             queries_file], capture_output=True, text=True, env=env, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--model-only-images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch/FAISS threads of the main process")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader decoding workers")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                        help="run the embed jobs with MALLOC_MMAP_THRESHOLD_=BYTES (glibc)")
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--workdir", default=None, help="keep generated data here (default: a temporary folder)")
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_jobs_")
    print(f"workdir: {workdir}; load average {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores", flush=True)

    if not args.skip_embed:
        model_folder = os.path.join(workdir, "model")
        if not os.path.isdir(model_folder):
            make_model(model_folder)
        start = time.perf_counter()
        make_images(os.path.join(workdir, "images"), max(args.images))
        print(f"images ready in {time.perf_counter() - start:.1f} s", flush=True)
        rows = []
        for count in sorted(args.images):
            data = os.path.join(workdir, f"images-{count}")
            if not os.path.isdir(data):  # the first `count` images, as a folder of links
                os.makedirs(data)
                for sub in sorted(os.listdir(os.path.join(workdir, "images")))[: -(-count // 1000)]:
                    os.symlink(os.path.join(workdir, "images", sub), os.path.join(data, sub))
            # The model-only figure is taken just before and just after each job (the machine may be shared).
            before = model_only(model_folder, args.model_only_images, args.batch_size, args.threads)
            out = os.path.join(workdir, f"out-{count}-{time.time_ns()}")
            run = embed_run(model_folder, data, out, args.batch_size, args.threads, args.workers,
                            args.malloc_mmap_threshold)
            after = model_only(model_folder, args.model_only_images, args.batch_size, args.threads)
            only = (before + after) / 2
            rows.append((count, run, only))
            data_rate = data_only(model_folder, data, args.batch_size, args.workers) if count == min(args.images) \
                else None
            print(f"model only: {before:.0f} img/s before, {after:.0f} img/s after; load average "
                  f"{os.getloadavg()[0]:.1f}" + (f"; data path alone ({args.workers} worker"
                  f"{'s' * (args.workers != 1)}, no model): {data_rate:.0f} img/s" if data_rate else ""), flush=True)
            print(f"{count} images: embed {run['items_per_second']:.0f} img/s (wall {run['wall_s']:.1f} s, "
                  f"{run['items']} images, waited for input {run['wait_percent']}% of the loop), model only "
                  f"{only:.0f} img/s -> {run['items_per_second'] / only:.1%}; "
                  f"peak RSS main {run['rss_main_mib']:.0f} MiB, worker {run['rss_worker_mib']:.0f} MiB", flush=True)
        if len(rows) > 1:
            low, high = rows[0][1]["rss_main_mib"], rows[-1][1]["rss_main_mib"]
            print(f"peak RSS {rows[-1][0]} vs {rows[0][0]} images: {high / low - 1:+.1%}", flush=True)

    if not args.skip_index:
        folder = os.path.join(workdir, f"vectors-{args.vectors}x{args.dim}")
        if not os.path.isdir(folder):
            vectors = synthetic_embeddings(folder, args.vectors, args.dim)
        else:
            from dualclip.jobs.index import embedding_shards

            vectors = np.concatenate([v for _, v in embedding_shards(folder, "image")])
        rng = np.random.default_rng(1)
        picked = rng.choice(len(vectors), 1000, replace=False)
        queries = vectors[picked] + 0.02 * rng.standard_normal((1000, args.dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        queries_file = os.path.join(workdir, "queries.npy")
        np.save(queries_file, queries.astype(np.float32))
        results = {}
        for index_type in ("exact", "compressed"):
            output = os.path.join(workdir, f"index-{index_type}-{time.time_ns()}")
            results[index_type] = run = index_run(folder, output, index_type, args.threads, queries_file)
            ids = np.load(os.path.join(output, "ids.npy"))
            results[index_type]["ids"] = ids
            print(f"{index_type} ({run['factory']}, nprobe {run['nprobe']}): build {run['build_s']:.1f} s, "
                  f"file {run['index_mib']:.1f} MiB, RSS {run['rss_before_mib']:.0f} MiB before the build, peak "
                  f"{run['rss_peak_mib']:.0f} MiB during it (+{run['rss_peak_mib'] - run['rss_before_mib']:.0f}); "
                  f"query k=10: {run['query_ms']:.2f} ms one at a "
                  f"time ({run['query_1thread_ms']:.2f} ms with 1 thread), {run['batch_ms']:.0f} ms for "
                  f"{run['queries']} at once; with metadata "
                  f"{run['search_with_metadata_ms']:.1f} ms/query", flush=True)
        exact, compressed = results["exact"]["ids"], results["compressed"]["ids"]
        found = np.mean([picked[i] in exact[i] for i in range(len(picked))])
        recall = np.mean([len(set(exact[i]) & set(compressed[i])) / 10 for i in range(len(picked))])
        top1 = np.mean(compressed[:, 0] == exact[:, 0])
        print(f"exact finds the perturbed source in its top 10 for {found:.1%} of queries; compressed: "
              f"{recall:.1%} of exact's top 10, top-1 equal for {top1:.1%}", flush=True)


if __name__ == "__main__":
    main()

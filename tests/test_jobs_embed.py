"""`dualclip embed` on datasets: numbers equal the model's own forward pass, bad files listed, resume after SIGKILL
with identical bytes, refusal of changed settings, and two `accelerate launch` processes equal one."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
from jobs_data import (
    bad_files,
    caption,
    direct_embeddings,
    folder_bytes,
    read_shards,
    write_digit_folder,
    write_tar,
)

from dualclip.cli import main
from dualclip.jobs import embed

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    files = write_digit_folder(root / "digits", 18)
    with open(root / "pairs.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "caption", "label"])
        writer.writerows([os.path.relpath(path, root), caption(label, i), label] for i, (path, label) in
                         enumerate(files))
    return root, files


def test_embeddings_equal_the_model_called_directly(data, tmp_path):
    root, files = data
    paths = [path for path, _ in files]
    captions = [caption(label, i) for i, (_, label) in enumerate(files)]
    summary = embed(root / "pairs.csv", tmp_path / "out", modality="both", shard_size=5, batch_size=4, workers=1,
                    output_dtype="float32", progress=False)
    assert summary["finished"] and summary["items"] == 18 and summary["shards"] == 4
    image, text = direct_embeddings(paths, captions)
    np.testing.assert_allclose(read_shards(tmp_path / "out", "image.npy"), image, atol=2e-6)
    np.testing.assert_allclose(read_shards(tmp_path / "out", "text.npy"), text, atol=2e-6)
    rows = read_shards(tmp_path / "out", "parquet")
    assert [row["id"] for row in rows] == list(range(18))
    assert [row["path"] for row in rows] == paths and [row["caption"] for row in rows] == captions
    assert [row["label"] for row in rows] == [label for _, label in files]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model"]["name"] == "embedded tiny-digits model" and len(manifest["model"]["config_sha256"]) == 64
    assert manifest["compute_dtype"] == "float32" and manifest["output_dtype"] == "float32"
    assert manifest["preprocessing"]["size"] == {"height": 32, "width": 32}
    assert manifest["modalities"] == ["image", "text"] and manifest["input"]["kind"] == "csv"
    assert (tmp_path / "out" / "failures.jsonl").read_text() == ""

    # float16 output (the default) is the same numbers rounded; text alone from the caption column.
    embed(root / "pairs.csv", tmp_path / "half", modality="text", shard_size=7, workers=0, progress=False)
    half = read_shards(tmp_path / "half", "text.npy")
    assert half.dtype == np.float16 and not os.path.exists(tmp_path / "half" / "00000.image.npy")
    np.testing.assert_allclose(half.astype(np.float32), text, atol=1e-3)


def test_bad_files_are_skipped_and_listed(data, tmp_path, capsys):
    root, files = data
    folder = tmp_path / "mixed"
    write_digit_folder(folder / "good", 5, class_folders=False)
    reasons = bad_files(folder / "bad")
    assert main(["embed", str(folder), "--output", str(tmp_path / "out"), "--workers", "0", "--shard-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "5 images in 3 shards" in out and "4 failed" in out
    failures = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert {failure["path"]: failure["reason"] for failure in failures}.keys() == reasons.keys()
    for failure in failures:
        assert failure["reason"].startswith(reasons[failure["path"]]), failure
    rows = read_shards(tmp_path / "out", "parquet")
    assert len(rows) == len(read_shards(tmp_path / "out", "image.npy")) == 5
    assert all("/good/" in row["path"] for row in rows)


def test_webdataset_shards_give_one_output_shard_each(data, tmp_path):
    _, files = data
    captions = [caption(label, i) for i, (_, label) in enumerate(files)]
    samples = [(f"{i:04d}", {"png": open(path, "rb").read(), "txt": text.encode()})
               for i, ((path, _), text) in enumerate(zip(files, captions))]
    samples.insert(3, ("broken", {"png": b"\x89PNG\r\n\x1a\n" + bytes(30), "txt": b"a broken image"}))
    write_tar(tmp_path / "train-00.tar", samples[:10])
    write_tar(tmp_path / "train-01.tar", samples[10:])
    summary = embed(str(tmp_path / "train-{00..01}.tar"), tmp_path / "out", workers=1, batch_size=4,
                    output_dtype="float32", progress=False)
    assert summary["shards"] == 2 and summary["items"] == 18 and summary["failures"] == 1
    image, text = direct_embeddings([path for path, _ in files], captions)
    np.testing.assert_allclose(read_shards(tmp_path / "out", "image.npy"), image, atol=2e-6)
    np.testing.assert_allclose(read_shards(tmp_path / "out", "text.npy"), text, atol=2e-6)
    rows = read_shards(tmp_path / "out", "parquet")
    assert [row["key"] for row in rows] == [key for key, _ in samples if key != "broken"]
    assert rows[9]["id"] == 2**32 and rows[9]["path"].endswith("train-01.tar/0009.png")
    failure = json.loads((tmp_path / "out" / "failures.jsonl").read_text())
    assert failure["id"] == 3 and failure["path"].endswith("train-00.tar/broken.png")


KILLED_RUN = """
import sys, time
import dualclip.jobs.output as output

commit = output.OutputFolder.commit

def stop_inside_commit(self, shard, writers, record):
    if shard == 2:  # the worst moment: shard 2's data files are in place, its done record is not
        for suffix, write in writers.items():
            output.atomic_write(self.file(shard, suffix), write)
        print("inside commit", flush=True)
        time.sleep(600)
    return commit(self, shard, writers, record)

output.OutputFolder.commit = stop_inside_commit
from dualclip.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_sigkill_gives_identical_bytes_and_redoes_only_unfinished_shards(data, tmp_path):
    root, _ = data
    argv = ["embed", str(root / "pairs.csv"), "--modality", "both", "--shard-size", "4", "--batch-size", "3"]
    assert main(argv + ["--output", str(tmp_path / "reference"), "--workers", "0"]) == 0

    out = tmp_path / "resumed"
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, *argv, "--output", str(out), "--workers", "0"],
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "inside commit", process.stderr.read()
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    assert (out / "00002.image.npy").exists() and not (out / "00002.done.json").exists()
    finished = {name: os.stat(out / name) for name in os.listdir(out) if name[:5] in ("00000", "00001")}
    assert len(finished) == 8  # image.npy, text.npy, parquet, done.json for shards 0 and 1

    summary = embed(root / "pairs.csv", out, modality="both", shard_size=4, batch_size=3, workers=1, progress=False)
    assert summary["skipped_shards"] == 2 and summary["shards"] == 3 and summary["items"] == 10
    for name, before in finished.items():  # finished shards were not rewritten
        after = os.stat(out / name)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    assert folder_bytes(out) == folder_bytes(tmp_path / "reference")

    again = embed(root / "pairs.csv", out, modality="both", shard_size=4, batch_size=3, progress=False)
    assert again["shards"] == 0 and again["skipped_shards"] == 5 and again["finished"]


def test_a_resume_with_other_settings_is_refused(data, tmp_path, capsys):
    root, _ = data
    argv = ["embed", str(root / "digits"), "--output", str(tmp_path / "out"), "--workers", "0"]
    assert main(argv) == 0
    capsys.readouterr()
    other_model = tmp_path / "other"
    import shutil

    from dualclip import TINY_MODEL_PATH

    shutil.copytree(TINY_MODEL_PATH, other_model)
    config = json.loads((other_model / "config.json").read_text())
    config["logit_scale_init_value"] = 1.0
    (other_model / "config.json").write_text(json.dumps(config))
    for extra, changed in ((["--batch-size", "7"], "batch_size: was 256, now 7"),
                           (["--output-dtype", "float32"], "output_dtype"),
                           (["--model", str(other_model)], "model.config_sha256"),
                           (["--shard-size", "5"], "input.shard_size")):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert "cannot be resumed with these" in err and changed in err, err
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    assert main(["embed", str(root / "digits"), "--output", str(tmp_path / "stranger")]) == 2
    assert "not made by a dualclip job" in capsys.readouterr().err


def test_the_tiny_model_warns_once_on_images_that_are_not_8x8_digits(tmp_path, capsys):
    for index in range(5):
        PIL.Image.new("RGB", (64, 48), (index * 40, 0, 0)).save(tmp_path / f"photo{index}.png")
    embed(tmp_path, tmp_path / "out", batch_size=2, workers=0, progress=False)
    err = capsys.readouterr().err
    assert err.count("trained only on 8x8 handwritten digits") == 1 and "64x48" in err
    assert main(["embed", "--images", str(tmp_path / "photo0.png")]) == 0
    assert "trained only on 8x8 handwritten digits" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_under_accelerate_launch_write_what_one_process_writes(data, tmp_path):
    root, _ = data
    argv = ["embed", str(root / "pairs.csv"), "--modality", "both", "--shard-size", "3", "--batch-size", "2",
            "--workers", "0"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "dualclip"]
    started = time.perf_counter()
    result = subprocess.run(launch + argv + ["--output", str(tmp_path / "two")], capture_output=True, text=True,
                            env={**ENV, "HF_HOME": str(tmp_path / "hf_home")}, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "process 0 of 2: embed: 9 images in 3 shards" in result.stdout
    assert "process 1 of 2: embed: 9 images in 3 shards" in result.stdout
    assert time.perf_counter() - started < 120
    assert main(argv + ["--output", str(tmp_path / "one")]) == 0
    two, one = folder_bytes(tmp_path / "two"), folder_bytes(tmp_path / "one")
    assert sorted(two) == sorted(one) and len(one) == 6 * 4 + 2
    assert two == one

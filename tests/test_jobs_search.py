"""`dualclip index` / `search`: the index choice, and searches that return the known nearest neighbours."""

import json
import os

import numpy as np
import pytest
from jobs_data import direct_embeddings, read_shards, write_digit_folder

from dualclip.cli import main
from dualclip.jobs import build_index, embed, search
from dualclip.jobs.common import write_metadata, write_npy
from dualclip.jobs.index import choose_index, parse_size
from dualclip.jobs.output import OutputFolder


def test_the_index_is_exact_when_small_and_compressed_when_large_or_over_budget():
    assert parse_size("4GB") == 4 * 2**30 and parse_size("512MiB") == 2**29 and parse_size(1000) == 1000
    small = choose_index(100_000, 512, parse_size("4GB"))
    assert small["kind"] == "exact" and small["factory"] == "IDMap2,Flat" and small["bytes"] == 100_000 * 2056
    over_budget = choose_index(100_000, 512, parse_size("100MB"))
    assert over_budget["kind"] == "compressed" and over_budget["bytes"] <= parse_size("100MB")
    assert over_budget["factory"] == "IVF256,PQ128x8" and over_budget["nprobe"] == 16
    tight = choose_index(100_000, 512, parse_size("5MB"))
    assert tight["m"] < over_budget["m"] and tight["bytes"] <= parse_size("5MB")
    huge = choose_index(50_000_000, 768, parse_size("1TB"))
    assert huge["kind"] == "compressed" and huge["nlist"] == 8192  # past EXACT_MAX, whatever the budget
    assert choose_index(10, 32, 1, "exact")["kind"] == "exact"
    with pytest.raises(ValueError, match="do not fit"):
        choose_index(100_000, 512, parse_size("1MB"))
    with pytest.raises(ValueError, match="index type must be"):
        choose_index(10, 32, 10**9, "hnsw")


def _synthetic_folder(folder, vectors, ids, shard_size):
    shards = -(-len(vectors) // shard_size)
    output = OutputFolder(folder, shards)
    output.open({"job": "embed", "modalities": ["image"], "shards": shards,
                 "model": {"name": "synthetic", "projection_dim": vectors.shape[1]}})
    for shard in range(shards):
        part = slice(shard * shard_size, (shard + 1) * shard_size)
        rows = [{"id": int(i), "path": f"item{i}.png", "caption": None, "label": None, "key": None} for i in ids[part]]
        output.commit(shard, {"image.npy": write_npy(vectors[part].astype(np.float16)),
                              "parquet": write_metadata(rows)}, {"rows": len(rows), "failures": []})


@pytest.mark.parametrize("index_type", ["exact", "compressed"])
def test_search_by_embedding_returns_the_known_neighbours(tmp_path, index_type):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = 1000 + 3 * np.arange(3000)
    _synthetic_folder(tmp_path / "emb", vectors, ids, shard_size=700)
    info = build_index(tmp_path / "emb", index_type=index_type, threads=1)
    assert info["kind"] == index_type and info["count"] == 3000
    picked = rng.choice(3000, 50, replace=False)
    queries = vectors[picked] + 0.05 * rng.standard_normal((50, 32)).astype(np.float32)
    results = search(info["folder"], embeddings=queries, k=5)
    stored = vectors.astype(np.float16).astype(np.float32)
    expected = np.argsort(-(queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ stored.T, axis=1)[:, :5]
    if index_type == "exact":
        assert [[hit["id"] for hit in hits] for hits in results] == ids[expected].tolist()
        for hits, row in zip(results, expected):
            assert [hit["path"] for hit in hits] == [f"item{ids[i]}.png" for i in row]
    else:
        assert info["factory"].startswith("IVF") and info["nprobe"] >= 1
        found = np.mean([ids[p] in [hit["id"] for hit in hits] for p, hits in zip(picked, results)])
        assert found >= 0.9, found


def test_search_cli_by_text_and_image_on_an_embedded_folder(tmp_path, capsys):
    files = write_digit_folder(tmp_path / "digits", 30)
    embed(tmp_path / "digits", tmp_path / "emb", workers=0, progress=False)
    assert main(["index", str(tmp_path / "emb")]) == 0
    assert "exact index (IDMap2,Flat) of 30 image vectors" in capsys.readouterr().out

    stored = read_shards(tmp_path / "emb", "image.npy").astype(np.float32)
    query = "a handwritten digit three"
    _, text = direct_embeddings(texts=[query])
    expected = np.argsort(-(stored @ text[0]), kind="stable")[:4]
    assert main(["search", str(tmp_path / "emb"), "--text", query, "-k", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["query"] == query
    assert [hit["id"] for hit in result[0]["results"]] == expected.tolist()
    assert [hit["path"] for hit in result[0]["results"]] == [files[i][0] for i in expected]

    assert main(["search", str(tmp_path / "emb" / "image-index"), "--image", files[7][0], "-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"query: {files[7][0]}" and out[1].split() == ["rank", "id", "score", "path", "caption"]
    rank, item, score, path = out[2].split()
    assert (rank, item, path) == ("1", "7", files[7][0]) and abs(float(score) - 1) < 2e-3

    np.save(tmp_path / "q.npy", stored[[3, 11]])
    assert main(["search", str(tmp_path / "emb"), "--embedding", str(tmp_path / "q.npy"), "-k", "1", "--json"]) == 0
    assert [r["results"][0]["id"] for r in json.loads(capsys.readouterr().out)] == [3, 11]

    os.remove(tmp_path / "emb" / "00000.done.json")
    assert main(["index", str(tmp_path / "emb"), "--output", str(tmp_path / "again")]) == 2
    assert "is not finished" in capsys.readouterr().err

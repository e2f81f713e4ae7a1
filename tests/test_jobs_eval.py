"""`dualclip eval` numbers against an independent scikit-learn computation, and `dualclip score` filtering."""

import csv
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from jobs_data import caption, direct_embeddings, write_digit_folder
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import top_k_accuracy_score
from sklearn.model_selection import train_test_split

from dualclip.cli import main
from dualclip.jobs import evaluate, score
from dualclip.jobs.evaluate import retrieval_recall
from dualclip.tiny_model import DIGIT_NAMES, DIGIT_TEMPLATE


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    files = write_digit_folder(root / "digits", 80)
    rows = [(path, caption(label, i), label) for i, (path, label) in enumerate(files)]
    with open(root / "pairs.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "caption", "label"])
        writer.writerows(rows)
    return root, rows


def test_eval_numbers_equal_scikit_learn(table):
    root, rows = table
    results = evaluate(root / "pairs.csv", class_names=DIGIT_NAMES, probe_c=[1.0], workers=0, progress=False)
    paths, captions, labels = (list(column) for column in zip(*rows))
    labels = np.array(labels)
    image, text = direct_embeddings(paths, captions)
    _, classes = direct_embeddings(texts=[DIGIT_TEMPLATE.format(name) for name in DIGIT_NAMES])

    zero_shot = image @ classes.T
    assert results["zeroshot"]["top1"] == pytest.approx(top_k_accuracy_score(labels, zero_shot, k=1), abs=1e-12)
    assert results["zeroshot"]["top5"] == pytest.approx(top_k_accuracy_score(labels, zero_shot, k=5), abs=1e-12)
    assert results["zeroshot"]["top1"] > 0.9

    similarity, n = image @ text.T, len(rows)
    for k in (1, 5, 10):
        i2t = top_k_accuracy_score(np.arange(n), similarity, k=k, labels=np.arange(n))
        t2i = top_k_accuracy_score(np.arange(n), similarity.T, k=k, labels=np.arange(n))
        assert results["retrieval"]["image_to_text"][f"R@{k}"] == pytest.approx(i2t, abs=1e-12)
        assert results["retrieval"]["text_to_image"][f"R@{k}"] == pytest.approx(t2i, abs=1e-12)

    train_x, test_x, train_y, test_y = train_test_split(image, labels, test_size=0.25, random_state=0,
                                                        stratify=labels)
    probe = LogisticRegression(C=1.0, max_iter=1000).fit(train_x, train_y)
    assert results["linear_probe"]["top1"] == pytest.approx(probe.score(test_x, test_y), abs=1e-12)
    assert results["linear_probe"]["train"] == 60 and results["linear_probe"]["test"] == 20


def test_retrieval_groups_repeated_images_and_captions():
    rng = np.random.default_rng(1)
    image = rng.standard_normal((6, 8))
    text = rng.standard_normal((6, 8))
    keys = ["a", "a", "b", "c", "c", "d"]  # rows 0-1 and 3-4 show the same image with two captions
    captions = ["x0", "x1", "y", "z0", "z1", "y"]  # "y" describes images b and d
    result = retrieval_recall(image, text, keys, captions)
    assert (result["images"], result["texts"]) == (4, 5)
    unique_images, unique_texts = image[[0, 2, 3, 5]], text[[0, 1, 2, 3, 4]]
    positives = {0: {0, 1}, 1: {2}, 2: {3, 4}, 3: {2}}
    scores = unique_images @ unique_texts.T
    for k in (1, 5):
        hits = [bool(set(np.argsort(-scores[i])[:k]) & positives[i]) for i in range(4)]
        assert result["image_to_text"][f"R@{k}"] == pytest.approx(np.mean(hits))
        images_of = {t: {i for i, ts in positives.items() if t in ts} for t in range(5)}
        hits = [bool(set(np.argsort(-scores[:, t])[:k]) & images_of[t]) for t in range(5)]
        assert result["text_to_image"][f"R@{k}"] == pytest.approx(np.mean(hits))


def test_eval_cli_on_a_labelled_folder(table, tmp_path, capsys):
    root, _ = table
    assert main(["eval", str(root / "digits"), "--workers", "0", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "model: embedded tiny-digits model" in out and "(80 images)" in out
    table_rows = {" ".join(line.split()[:-1]): float(line.split()[-1]) for line in out.splitlines()[4:]}
    results = json.loads((tmp_path / "r.json").read_text())
    assert table_rows["zero-shot top-1"] == pytest.approx(results["zeroshot"]["top1"], abs=1e-4)
    assert results["zeroshot"]["templates"] == [DIGIT_TEMPLATE] and "retrieval" not in results
    probe = results["linear_probe"]
    assert probe["C"] in (0.1, 1.0, 10.0, 100.0) and len(probe["validation_top1"]) == 4
    assert main(["eval", str(root / "digits"), "--task", "retrieval"]) == 2
    assert "has no captions" in capsys.readouterr().err


def test_score_keeps_pairs_above_the_threshold_and_refilters_without_recomputing(table, tmp_path):
    root, rows = table
    summary = score(root / "pairs.csv", tmp_path / "scores", shard_size=30, batch_size=16, workers=0, progress=False)
    assert summary["finished"] and summary["items"] == 80
    scored = pq.read_table(tmp_path / "scores" / "00001.parquet").to_pylist()
    assert [row["id"] for row in scored] == list(range(30, 60))
    image, text = direct_embeddings([r[0] for r in rows], [r[1] for r in rows])
    expected = np.einsum("nd,nd->n", image, text)
    got = np.concatenate([pq.read_table(tmp_path / "scores" / f"0000{s}.parquet")["similarity"].to_numpy()
                          for s in range(3)])
    np.testing.assert_allclose(got, expected, atol=2e-6)

    threshold = float(np.median(got))
    again = score(root / "pairs.csv", tmp_path / "scores", keep_above=threshold, shard_size=30, batch_size=16,
                  progress=False)
    assert again["items"] == 0 and again["skipped_shards"] == 3  # nothing recomputed, only filtered
    kept = pq.read_table(tmp_path / "scores" / "kept.parquet").to_pylist()
    assert [row["id"] for row in kept] == [i for i in range(80) if got[i] >= threshold]
    assert json.loads((tmp_path / "scores" / "kept.json").read_text())["kept"] == len(kept) == 40
    assert os.path.basename(kept[0]["path"]).endswith(".png") and kept[0]["caption"] == rows[kept[0]["id"]][1]

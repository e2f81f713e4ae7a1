"""Job inputs: every kind of source lists the same items (ids, paths, captions, labels, image bytes); URLs refused."""

import csv
import json
import os

import pytest
from jobs_data import caption, write_digit_folder, write_tar

from dualclip.cli import main
from dualclip.jobs.decoding import load_image
from dualclip.jobs.sources import TAR_ID_STRIDE, expand_braces, open_source


def _items(source):
    """(id, caption, label, image bytes) of every record, loaded as a worker would."""
    items = []
    for shard in range(source.num_shards):
        for record in source.records(shard):
            record = source.load(record)
            image = record.image
            if isinstance(image, str):
                with open(image, "rb") as file:
                    image = file.read()
            items.append((record.id, record.caption, record.label, image))
    source.close()
    return items


def test_brace_expansion():
    assert expand_braces("d/{00008..00011}.tar") == ["d/00008.tar", "d/00009.tar", "d/00010.tar", "d/00011.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    files = write_digit_folder(root / "folder", 10)
    return root, files


def test_every_source_kind_reads_the_same_items(digits):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, files = digits
    names = sorted({os.path.basename(os.path.dirname(path)) for path, _ in files})
    expected = [(i, caption(label, i), names.index(os.path.basename(os.path.dirname(path))),
                 open(path, "rb").read()) for i, (path, label) in enumerate(files)]
    rows = [{"image": os.path.relpath(path, root), "caption": caption(label, i),
             "label": os.path.basename(os.path.dirname(path))} for i, (path, label) in enumerate(files)]

    folder = open_source(root / "folder", shard_size=4)
    assert folder.num_shards == 3 and folder.classes == names
    assert [(i, None, label, data) for i, _, label, data in expected] == _items(folder)

    (root / "paths.txt").write_text("# digits\n" + "".join(row["image"] + "\n" for row in rows))
    listed = open_source(root / "paths.txt", shard_size=3)
    assert listed.num_shards == 4
    assert [(i, None, None, data) for i, _, _, data in expected] == _items(listed)

    with open(root / "table.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["image", "caption", "label"])
        writer.writeheader()
        writer.writerows(rows)
    with open(root / "table.jsonl", "w") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    pq.write_table(pa.Table.from_pylist(rows), root / "table.parquet", row_group_size=3)
    for name in ("table.csv", "table.jsonl", "table.parquet"):
        table = open_source(root / name, shard_size=4)
        assert table.classes == names and table.has_captions, name
        assert expected == _items(table), name

    samples = [(f"s{i:03d}", {"png": data, "txt": text.encode(), "cls": str(label).encode()})
               for i, text, label, data in expected]
    write_tar(root / "shard-0.tar", samples[:6])
    write_tar(root / "shard-1.tar", samples[6:])
    tars = open_source(str(root / "shard-{0..1}.tar"))
    assert tars.num_shards == 2 and tars.has_images and tars.has_captions
    write_tar(root / "images-only.tar", [(key, {"png": members["png"]}) for key, members in samples])
    assert not open_source(root / "images-only.tar").has_captions
    assert [(i if i < 6 else TAR_ID_STRIDE + i - 6, c, label, data) for i, c, label, data in expected] == _items(tars)

    dataset = datasets.Dataset.from_dict(
        {"image": [path for path, _ in files], "caption": [row["caption"] for row in rows],
         "label": [names.index(row["label"]) for row in rows]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=names)}),
    )
    datasets.DatasetDict({"test": dataset}).save_to_disk(str(root / "saved"))
    saved = open_source(root / "saved", shard_size=4)
    assert saved.classes == names and saved.split == "test"
    got = _items(saved)
    assert [item[:3] for item in expected] == [item[:3] for item in got]
    assert all(load_image(a[3])[0].tobytes() == load_image(b[3])[0].tobytes() for a, b in zip(expected, got))


def test_csv_shards_start_at_the_right_row_with_multiline_captions(tmp_path):
    rows = [{"path": f"{i}.png", "caption": f"line one {i}\nline two, \"quoted\""} for i in range(7)]
    with open(tmp_path / "t.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["path", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    source = open_source(tmp_path / "t.csv", shard_size=3)
    assert source.num_shards == 3
    got = [(r.id, r.caption) for shard in range(3) for r in source.records(shard)]
    assert got == [(i, row["caption"]) for i, row in enumerate(rows)]


def test_urls_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="URL: dualclip jobs read local files only"):
        open_source("https://example.com/data/{00000..00009}.tar")
    (tmp_path / "laion.csv").write_text("url,caption\nhttps://example.com/a.jpg,a cat\n")
    with pytest.raises(ValueError, match="is a URL"):
        open_source(tmp_path / "laion.csv", path_column="url")
    assert main(["embed", "s3://bucket/shards/0.tar", "--output", str(tmp_path / "out")]) == 2
    assert "is a URL: dualclip jobs read local files only" in capsys.readouterr().err
    assert load_image("http://example.com/a.png") == (None, "is a URL: jobs read local files only")


def test_unknown_inputs_are_clean_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="input not found"):
        open_source(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="tar shard not found"):
        open_source(str(tmp_path / "{0..1}.tar"))
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(ValueError, match="cannot tell what"):
        open_source(tmp_path / "x.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        open_source(tmp_path / "empty")

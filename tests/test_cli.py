"""`dualclip demo`, `classify` and `embed`: output, errors, and `demo` from a fresh offline install of the wheel."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from dualclip.cli import main
from dualclip.tiny_model import DIGIT_NAMES, DIGIT_TEMPLATE, TINY_MODEL_PATH, load_heldout_digits
from dualclip.zero_shot import embed_images, embed_texts, load_model_and_processor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    """Eight held-out digits as PNG files (8x8 grayscale), with their labels."""
    folder = tmp_path_factory.mktemp("digits")
    images, labels = load_heldout_digits()
    paths = []
    for index in range(8):
        path = folder / f"digit{index}.png"
        PIL.Image.fromarray(images[index]).save(path)
        paths.append(str(path))
    return paths, labels[:8]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_prints_a_table_and_the_accuracy(capsys):
    code, out, _ = run_cli(capsys, "demo", "--count", "5", "--top-k", "2")
    assert code == 0
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("image "))
    assert header.split() == ["image", "true", "top-1", "top-2"]
    rows = [line for line in lines if line[:4].isdigit()]
    assert [row.split()[0] for row in rows] == ["1500", "1501", "1502", "1503", "1504"]
    accuracy = float(out.split("held-out accuracy: ")[1].split()[0])
    assert accuracy >= 0.9 and "of 297 images" in out


def test_classify_files(capsys, digit_files):
    paths, labels = digit_files
    code, out, _ = run_cli(capsys, "classify", *paths, "--labels", *DIGIT_NAMES, "--template", DIGIT_TEMPLATE)
    assert code == 0
    rows = out.splitlines()[1:]
    assert len(rows) == len(paths) and all(row.startswith(path) for row, path in zip(rows, paths))
    top1 = [row.split()[1] for row in rows]
    assert sum(name == DIGIT_NAMES[label] for name, label in zip(top1, labels)) >= 6
    probabilities = [float(row.split()[2]) for row in rows]
    assert all(0 <= p <= 1 for p in probabilities)


def test_classify_with_a_model_folder_and_fewer_labels_than_top_k(capsys, digit_files, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(TINY_MODEL_PATH, folder)
    code, out, _ = run_cli(capsys, "classify", digit_files[0][0], "--labels", "zero", "one", "--model", str(folder),
                           "--template", DIGIT_TEMPLATE, "--top-k", "5")
    assert code == 0 and out.splitlines()[0].split() == ["image", "top-1", "top-2"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["classify", "missing.png", "--labels", "a"], "image file not found: missing.png"),
        (["classify", "{image}", "--labels", "a", "--template", "no slot"], "template must contain exactly one"),
        (["classify", "{image}", "--labels", "a", "--model", "no/such/folder"], "model folder not found"),
        (["classify", "{text_file}", "--labels", "a"], "is not an image file"),
        (["classify", "{image}", "--labels", "a", "--top-k", "0"], "--top-k must be at least 1"),
        (["embed", "--text", "a", "--output", "out.txt"], "--output must name a .npy file"),
        (["demo", "--count", "-1"], "--count must be 0 or more"),
    ],
)
def test_bad_input_is_a_clean_error(capsys, digit_files, tmp_path, argv, message):
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    argv = [arg.format(image=digit_files[0][0], text_file=text_file) for arg in argv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err and err.startswith(f"dualclip {argv[0]}: error:") and "Traceback" not in err


def test_classify_reads_16_bit_pngs_as_their_8_bit_pictures(capsys, digit_files, tmp_path):
    eight_bit = digit_files[0][:3]
    sixteen_bit = []
    for index, path in enumerate(eight_bit):
        sixteen = tmp_path / f"digit{index}-16bit.png"
        PIL.Image.fromarray(np.asarray(PIL.Image.open(path)).astype(np.uint16) * 257).save(sixteen)
        sixteen_bit.append(str(sixteen))
    outputs = []
    for paths in (eight_bit, sixteen_bit):
        code, out, _ = run_cli(capsys, "classify", *paths, "--labels", *DIGIT_NAMES, "--template", DIGIT_TEMPLATE)
        assert code == 0
        outputs.append([row.split()[1:] for row in out.splitlines()[1:]])
    assert outputs[0] == outputs[1]


def _rewrite_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _truncate(path, size):
    with open(path, "r+b") as file:
        file.truncate(size)


DAMAGED_MODEL_FILES = {  # file in the model folder, and what is done to it
    "config.json not JSON": ("config.json", lambda path: path.write_text("{garbage")),
    "config.json empty": ("config.json", lambda path: path.write_text("")),
    "config.json a JSON list": ("config.json", lambda path: path.write_text("[1, 2]")),
    "config.json of another model": ("config.json", lambda path: path.write_text('{"model_type": "bert"}')),
    "config.json with a wrong field": ("config.json", lambda path: _rewrite_json(path, vision_config=5)),
    "model.safetensors truncated": ("model.safetensors", lambda path: _truncate(path, path.stat().st_size // 2)),
    "model.safetensors header cut": ("model.safetensors", lambda path: _truncate(path, 20)),
}


def _damaged_model(tmp_path, case):
    name, damage = DAMAGED_MODEL_FILES[case]
    folder = tmp_path / "damaged-model"
    shutil.copytree(TINY_MODEL_PATH, folder)
    damage(folder / name)
    return folder, folder / name


def assert_one_error_line(code, err, command, names):
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"dualclip {command}: error: ") and str(names) in lines[0], err


@pytest.mark.parametrize("case", list(DAMAGED_MODEL_FILES))
def test_damaged_model_folder_is_one_error_line_naming_the_file(capfd, digit_files, tmp_path, monkeypatch, case):
    folder, damaged = _damaged_model(tmp_path, case)
    code = main(["classify", digit_files[0][0], "--labels", "a", "b", "--model", str(folder)])
    assert_one_error_line(code, capfd.readouterr().err, "classify", damaged)
    # Every command that takes --model gets the same check before it runs.
    code = main(["embed", "--text", "a", "--model", str(folder)])
    assert_one_error_line(code, capfd.readouterr().err, "embed", damaged)

    monkeypatch.setattr("dualclip.tiny_model.TINY_MODEL_PATH", str(folder))  # demo always uses the tiny model
    assert_one_error_line(main(["demo"]), capfd.readouterr().err, "demo", damaged)


def test_corrupt_image_files_are_one_error_line_naming_the_file(capfd, tmp_path):
    good = tmp_path / "good.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated, garbage = tmp_path / "truncated.png", tmp_path / "garbage.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])  # header intact, pixel data cut
    garbage.write_bytes(b"\xff\xd8 not really a JPEG")
    for path in (truncated, garbage):
        code = main(["classify", str(good), str(path), "--labels", "a", "b"])
        err = capfd.readouterr().err
        assert_one_error_line(code, err, "classify", path)
        assert "is not an image file PIL can read" in err


@pytest.mark.parametrize("case", ["corrupt image", "config.json not JSON", "model.safetensors truncated"])
def test_errors_from_the_installed_command_are_one_line(digit_files, tmp_path, case):
    """The real process: nothing else on stderr (no logging, no traceback), exit code 2."""
    image, model, named = digit_files[0][0], None, None
    if case == "corrupt image":
        image = named = tmp_path / "corrupt.png"
        named.write_bytes(Path(digit_files[0][0]).read_bytes()[:40])
    else:
        model, named = _damaged_model(tmp_path, case)
    argv = [sys.executable, "-m", "dualclip.cli", "classify", str(image), "--labels", "a", "b"]
    argv += ["--model", str(model)] if model else []
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_one_error_line(result.returncode, result.stderr, "classify", named)
    assert result.stdout == ""


def test_embed_text_and_images_to_npy(capsys, digit_files, tmp_path):
    model, processor = load_model_and_processor(TINY_MODEL_PATH)
    texts = ["a handwritten digit one", "a handwritten digit two"]
    output = tmp_path / "text.npy"
    assert run_cli(capsys, "embed", "--text", *texts, "--output", str(output))[0] == 0
    embeddings = np.load(output)
    assert embeddings.dtype == np.float32 and embeddings.shape == (2, model.config.projection_dim)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(embeddings, embed_texts(model, processor, texts).numpy(), atol=1e-6)

    output = tmp_path / "images.npy"
    assert run_cli(capsys, "embed", "--images", *digit_files[0][:3], "--output", str(output))[0] == 0
    images = [PIL.Image.open(path).convert("RGB") for path in digit_files[0][:3]]
    np.testing.assert_allclose(np.load(output), embed_images(model, processor, images).numpy(), atol=1e-6)


def test_embed_prints_rows_without_output(capsys):
    code, out, _ = run_cli(capsys, "embed", "--text", "a handwritten digit one")
    assert code == 0
    row = np.array(out.split(), dtype=np.float64)
    assert row.shape == (32,) and abs(np.linalg.norm(row) - 1) < 1e-4


def test_embed_needs_text_or_images(capsys):
    with pytest.raises(SystemExit):
        main(["embed"])
    with pytest.raises(SystemExit):
        main(["embed", "--text", "a", "--images", "b.png"])


def test_demo_runs_offline_from_a_fresh_install(tmp_path):
    """Build the wheel from the working tree, install it alone into an empty folder, run `dualclip demo` there."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, source / name)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, env=env, cwd=tmp_path, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("dualclip-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, env=env,
                   timeout=300)

    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run([str(site / "bin" / "dualclip"), "demo", "--count", "3"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"model: {site}" in result.stdout  # the installed copy, not the working tree
    assert float(result.stdout.split("held-out accuracy: ")[1].split()[0]) >= 0.9


def test_classify_warns_once_when_the_tiny_model_sees_photos(capsys, digit_files, tmp_path):
    photo = tmp_path / "photo.png"
    PIL.Image.new("RGB", (64, 48), (200, 120, 40)).save(photo)
    assert main(["classify", str(photo), str(photo), "--labels", "cat", "dog"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "8x8 handwritten digits" in warnings[0] and "64x48" in warnings[0]
    paths, _ = digit_files
    assert main(["classify", *paths[:2], "--labels", "0", "1"]) == 0
    assert "warning:" not in capsys.readouterr().err  # real 8x8 digits: nothing to say

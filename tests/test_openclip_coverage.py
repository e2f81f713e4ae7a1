"""conversion/openclip_coverage.py: which of OpenCLIP's pretrained (model, tag) pairs convert, and README's table of
them, which must be what the script computes now."""

import importlib.util
import json
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

pytest.importorskip("open_clip")


def _load_script():
    spec = importlib.util.spec_from_file_location("openclip_coverage", ROOT / "conversion" / "openclip_coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


coverage = _load_script()


@pytest.fixture(scope="module")
def open_clip():
    return coverage.import_open_clip()


@pytest.fixture(scope="module")
def some_results():
    results, facts = coverage.compute_coverage(
        ["ViT-B-32", "RN50", "ViT-B-16-SigLIP", "convnext_base", "coca_ViT-B-32", "roberta-ViT-B-32"]
    )
    return {result.model: result for result in results}, facts


def test_models_that_convert(some_results, open_clip):
    results, _ = some_results
    listed = set(open_clip.list_pretrained())
    for name, family in (("ViT-B-32", "CLIP ViT (OpenCLIP's own towers)"), ("RN50", "CLIP ResNet (OpenCLIP's own towers)"),
                         ("ViT-B-16-SigLIP", "SigLIP"), ("convnext_base", "ConvNeXt"), ("coca_ViT-B-32", "CoCa")):
        result = results[name]
        assert (result.status, result.reason, result.family) == (coverage.CONVERTS, None, family), result
        assert result.architecture
        assert result.tags and all((name, tag) in listed for tag in result.tags)
        assert result.tags == sorted(result.tags)


def test_a_model_dualclip_cannot_express_is_refused_with_its_reason(open_clip, tmp_path):
    # Every model of open_clip 3.3's list converts (or needs the hub); an option dualclip does not express, in a
    # config registered for the test, shows the refusal path.
    config = dict(open_clip.get_model_config("ViT-B-32"))
    config["vision_cfg"] = dict(config["vision_cfg"], qk_norm=True)
    (tmp_path / "test-qk-norm.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    result = coverage.check_model(open_clip, "test-qk-norm", ["a-tag"])
    assert result.status == coverage.REFUSED and "vision_cfg.qk_norm=True" in result.reason, result
    assert "\n" not in result.reason and len(result.reason) <= 200 and result.architecture is None


def test_hugging_face_text_towers_are_not_built_offline(some_results):
    # open_clip builds them only with the text encoder's config (and weights) from the hub, as dualclip's converter
    # needs that config (tests/test_hf_text_family.py converts them from local configs).
    result = some_results[0]["roberta-ViT-B-32"]
    assert (result.status, result.family) == (coverage.NOT_BUILT, "Hugging Face text tower"), result
    assert "roberta-base" in result.reason and "hub" in result.reason


def test_markdown_and_json_rows(some_results):
    results, facts = some_results
    table = coverage.render_markdown(list(results.values()), facts)
    pairs = sum(len(r.tags) for r in results.values())
    converting = sum(len(r.tags) for r in results.values() if r.status == coverage.CONVERTS)
    assert f"**{converting} of {pairs} (model, tag) pairs convert.**" in table
    assert "| SigLIP | 1 of 1 | 1 of 1 |" in table
    assert "| ConvNeXt | 1 of 1 | 1 of 1 |" in table
    assert "EVA" not in table.split("**")[0]  # families without models in the subset get no row
    rows = coverage.per_pair(list(results.values()))
    assert len(rows) == pairs
    assert {"model", "tag", "family", "status", "reason", "architecture", "checked_on"} == set(rows[0])


def test_every_listed_model_has_a_family(open_clip):
    for name in coverage.pretrained_by_model(open_clip):
        assert coverage.family_of(name, open_clip.get_model_config(name)) in coverage.FAMILY_NAMES, name
    assert coverage.family_of("ViT-B-16-SigLIP2", open_clip.get_model_config("ViT-B-16-SigLIP2")) == "SigLIP 2"
    assert coverage.family_of("EVA02-E-14", open_clip.get_model_config("EVA02-E-14")) == "EVA"
    assert coverage.family_of("ViT-L-14-CLIPA", open_clip.get_model_config("ViT-L-14-CLIPA")) == "CLIPA"
    assert coverage.family_of("MobileCLIP2-L-14", open_clip.get_model_config("MobileCLIP2-L-14")) == "MobileCLIP"


def test_a_model_open_clip_cannot_build_is_reported(open_clip):
    def create_model(name, device=None):
        raise RuntimeError("cannot build " + name)

    fake = types.SimpleNamespace(get_model_config=open_clip.get_model_config, create_model=create_model)
    result = coverage.check_model(fake, "ViT-B-32", ["openai"])
    assert result.status == coverage.NOT_BUILT
    assert result.reason == "open_clip cannot build it on the meta device: RuntimeError: cannot build ViT-B-32"


def test_shorten():
    long_list = ", ".join(f"tower_{i}" for i in range(20))
    assert coverage.shorten(f"no\n  such  tower (one of {long_list})") == "no such tower (…)"
    assert coverage.shorten("option x={'a': 1, 'b': 2, 'c': 3, 'd': 4, 'e': 5, 'f': 6}: no") == "option x={…}: no"
    assert coverage.shorten("x" * 300).endswith("…") and len(coverage.shorten("x" * 300)) == 200


def test_readme_markers_are_replaced_in_place():
    text = f"a\n{coverage.START_MARKER}\nold\n{coverage.END_MARKER}\nb\n"
    replaced = coverage.replace_readme_section(text, "new table\n")
    assert replaced == f"a\n{coverage.START_MARKER}\nnew table\n{coverage.END_MARKER}\nb\n"
    assert coverage.readme_section(replaced) == "new table\n"
    with pytest.raises(ValueError, match="markers"):
        coverage.readme_section("no markers here")


@pytest.mark.slow
def test_readme_table_is_what_the_script_computes_now():
    results, facts = coverage.compute_coverage()
    assert facts["pairs"] == sum(len(r.tags) for r in results)
    assert [r.model for r in results] == sorted((r.model for r in results), key=lambda n: (n.lower(), n))
    assert not [r for r in results if r.status == coverage.ERROR], "the converter raised something other than a refusal"
    expected = coverage.render_markdown(results, facts)
    actual = coverage.readme_section(README.read_text(encoding="utf-8"))
    assert actual == expected, f"README's OpenCLIP table is stale; regenerate it: {coverage.REGENERATE}"

"""diffusers' own fast pipeline tests, run with stock CLIP text encoders and with dualclip's swapped in by name.

    git -C <diffusers checkout> archive v0.40.0 tests | tar -x -C /work/difftests
    python tests/diffusers_common/run.py --diffusers-tests /work/difftests

Not collected by pytest (its file name does not match `test_*.py`); diffusers' tests are not ours to copy into
this repository, so they are read from a checkout given on the command line. The modules (`MODULES`) run twice, in
subprocesses, from two copies of the checkout's `tests/` under `--work`:

- stock: unchanged;
- dualclip: in each module's top-level `from transformers import ...`, `CLIPTextModel`,
  `CLIPTextModelWithProjection`, `CLIPTextConfig` and `CLIPTokenizer` are replaced by
  `from dualclip import DualClipTextModel as CLIPTextModel, ...` (the rest of the file is untouched), and
  diffusers' LoRA test helper gets the table entry its error message asks for (`LORA_ENTRY`).

Both runs are offline (`HF_HUB_OFFLINE=1`) with `HF_HOME` on a cache holding local stand-ins for the hub
repositories the tests read (standins.py: tiny-random-clip's tokenizer, tiny-random-t5's config and tokenizer).
swap_plugin.py records the classes each pipeline was built with; the dualclip run must have built dualclip text
encoders and the stock run stock ones, or the comparison is refused. Outcomes come from junit XML and are compared
test by test: every test that passes for stock must pass for dualclip. Exit status 1 when one does not.
The IP-adapter tests need `requests-mock` (a diffusers test dependency) installed, or they fail in both runs.

Measured with diffusers 0.42.1, transformers 5.23.0 and the tests of diffusers' tag v0.40.0 (the newest tag; these
modules and their helpers are identical on the newest snapshot of main): stock passes / dualclip passes of those:
SD 1.x 43/43, SD img2img 24/24, SDXL 41/41, Flux 65/65 (about 5 minutes on 2 cores). What stock fails needs hub
pipelines (tiny-stable-diffusion-torch, SD 1.5's config) or compares images to slices made with the real
tiny-random-clip vocabulary, which the stand-in does not reproduce (`--stock-failures` lists them).
"""

import argparse
import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import standins  # noqa: E402

MODULES = {
    "SD 1.x": "tests/pipelines/stable_diffusion/test_stable_diffusion.py",
    "SD img2img": "tests/pipelines/stable_diffusion/test_stable_diffusion_img2img.py",
    "SDXL": "tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py",
    "Flux": "tests/pipelines/flux/test_pipeline_flux.py",
}
SWAPS = {
    "CLIPTextModel": "DualClipTextModel",
    "CLIPTextModelWithProjection": "DualClipTextModelWithProjection",
    "CLIPTextConfig": "DualClipTextConfig",
    "CLIPTokenizer": "DualClipTokenizer",
}
LORA_HELPER = "tests/pipelines/testing_utils/lora.py"
LORA_ENTRY = ('\n# added by dualclip\'s tests/diffusers_common/run.py (dualclip run only)\n'
              'TEXT_ENCODER_TARGET_MODULES["dualclip_text_model"] = TEXT_ENCODER_TARGET_MODULES["clip_text_model"]\n')
# Text encoders a pipeline may hold, by run: what swap_plugin.py must see for `text_encoder*` components.
CLIP_ENCODERS = {
    "stock": {"transformers.models.clip.modeling_clip.CLIPTextModel",
              "transformers.models.clip.modeling_clip.CLIPTextModelWithProjection"},
    "dualclip": {"dualclip.modeling_dualclip.DualClipTextModel",
                 "dualclip.modeling_dualclip.DualClipTextModelWithProjection"},
}


def swap_imports(source: str) -> tuple[str, int]:
    """Rewrites the top-level `from transformers import ...` statements of a test module; returns (source, names)."""
    lines = source.splitlines(keepends=True)
    swapped = 0
    for node in sorted(ast.parse(source).body, key=lambda n: -n.lineno):
        if not (isinstance(node, ast.ImportFrom) and node.module == "transformers" and node.level == 0):
            continue
        ours = [alias for alias in node.names if alias.name in SWAPS]
        if not ours:
            continue
        rest = [alias for alias in node.names if alias.name not in SWAPS]
        text = ast.unparse(ast.ImportFrom(module="transformers", names=rest, level=0)) + "\n" if rest else ""
        text += "from dualclip import " + ", ".join(
            f"{SWAPS[alias.name]} as {alias.asname or alias.name}" for alias in ours) + "\n"
        lines[node.lineno - 1:node.end_lineno] = [text]
        swapped += len(ours)
    return "".join(lines), swapped


def prepare(diffusers_tests: Path, work: Path, modules: dict[str, str]) -> dict[str, Path]:
    """Copies `tests/` for each run (fresh each time) and rewrites the dualclip copy's modules."""
    trees = {}
    for run in ("stock", "dualclip"):
        root = work / run
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(diffusers_tests / "tests", root / "tests",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (root / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
        trees[run] = root
    for module in modules.values():
        path = trees["dualclip"] / module
        source, swapped = swap_imports(path.read_text())
        if not swapped:
            raise SystemExit(f"{module}: no CLIP name imported from transformers at top level; nothing to swap")
        path.write_text(source)
    # diffusers' LoRA test helper picks a text encoder's LoRA target modules by `config.model_type` from a table
    # that knows only `clip_text_model` ("Add an entry ..." says its error). dualclip's text configs report
    # `dualclip_text_model`, with the same module names (stock state-dict layout), so the entry is CLIP's.
    lora = trees["dualclip"] / LORA_HELPER
    if lora.is_file() and "TEXT_ENCODER_TARGET_MODULES = {" in lora.read_text():
        lora.write_text(lora.read_text() + LORA_ENTRY)
    return trees


def run_suite(run: str, root: Path, modules: dict[str, str], hf_home: Path, pytest_args: list[str]) -> Path:
    junit, record = root / "junit.xml", root / "components.jsonl"
    for path in (junit, record):
        path.unlink(missing_ok=True)
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               DUALCLIP_DIFFTESTS_RECORD=str(record),
               PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    env.pop("RUN_SLOW", None)
    env.pop("RUN_NIGHTLY", None)
    command = [sys.executable, "-m", "pytest", "-p", "swap_plugin", "-p", "no:randomly", "-q", "--tb=line",
               f"--junitxml={junit}", "-o", "junit_family=xunit1", *modules.values(), *pytest_args]
    with open(root / "pytest.log", "w") as log:
        subprocess.run(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    if not junit.exists():
        raise SystemExit(f"{run} run wrote no junit XML; see {root / 'pytest.log'}")
    return junit


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: str  # passed, failed, skipped
    reason: str = ""


def read_junit(path: Path) -> dict[tuple[str, str], Outcome]:
    """(test module file, class::test) -> Outcome; errors count as failures."""
    outcomes = {}
    for case in ElementTree.parse(path).iter("testcase"):
        # the module named by the class (a test inherited from a mixin has the mixin's `file`)
        module = case.get("classname", "").rsplit(".", 1)[0].replace(".", "/") + ".py"
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        status, reason = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                status = "skipped" if tag == "skipped" else "failed"
                reason = (element.get("message") or element.text or "").strip().splitlines()
                reason = reason[0][:300] if reason else ""
                if tag == "error" and status == "failed" and outcomes.get((module, name), Outcome("")).status == "failed":
                    continue
        previous = outcomes.get((module, name))
        if previous is None or (previous.status == "passed" and status == "failed"):  # teardown error after a pass
            outcomes[(module, name)] = Outcome(status, reason)
    return outcomes


def check_swap(run: str, record: Path) -> int:
    """Number of tests whose pipelines held CLIP text encoders of the run's kind; exits if any held the other kind."""
    if not record.exists():
        raise SystemExit(f"{run} run recorded no pipeline components ({record}); swap_plugin did not load")
    ours, theirs, tests = CLIP_ENCODERS[run], CLIP_ENCODERS["dualclip" if run == "stock" else "stock"], set()
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        for components in entry["components"]:
            for key, cls in components.items():
                if key.startswith("text_encoder") and cls in theirs:
                    raise SystemExit(f"{run} run: {entry['test']} built a pipeline with {key}={cls}")
                if key.startswith("text_encoder") and cls in ours:
                    tests.add(entry["test"])
    if not tests:
        raise SystemExit(f"{run} run: no test built a pipeline with a {run} CLIP text encoder")
    return len(tests)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--diffusers-tests", type=Path, required=True,
                        help="root of a diffusers checkout (a folder holding tests/pipelines/...)")
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary folder, removed)")
    parser.add_argument("--modules", nargs="*", choices=list(MODULES), default=list(MODULES))
    parser.add_argument("--sequential", action="store_true", help="run stock then dualclip (default: at once)")
    parser.add_argument("--stock-failures", action="store_true", help="also list what fails for stock")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments for both runs (after --)")
    args = parser.parse_args(argv)
    modules = {name: MODULES[name] for name in args.modules}
    for module in modules.values():
        if not (args.diffusers_tests / module).is_file():
            raise SystemExit(f"{args.diffusers_tests / module} not found")

    temporary = None if args.work else tempfile.TemporaryDirectory(prefix="dualclip-difftests-")
    work = args.work or Path(temporary.name)
    work.mkdir(parents=True, exist_ok=True)
    # stand-ins are built in a subprocess: HF_HUB_OFFLINE must be set before huggingface_hub is imported
    hf_home = work / "hf_home"
    subprocess.run([sys.executable, str(HERE / "standins.py"), str(hf_home)], check=True,
                   env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"), stdout=subprocess.DEVNULL)
    trees = prepare(args.diffusers_tests, work, modules)
    with ThreadPoolExecutor(1 if args.sequential else 2) as pool:
        futures = {run: pool.submit(run_suite, run, root, modules, hf_home, args.pytest_args)
                   for run, root in trees.items()}
        junits = {run: future.result() for run, future in futures.items()}
    swapped = {run: check_swap(run, trees[run] / "components.jsonl") for run in trees}
    stock, ours = read_junit(junits["stock"]), read_junit(junits["dualclip"])

    import diffusers
    import transformers

    print(f"diffusers {diffusers.__version__} (tests from {args.diffusers_tests}), transformers "
          f"{transformers.__version__}; pipelines with CLIP text encoders of the run's kind: stock in "
          f"{swapped['stock']} tests, dualclip in {swapped['dualclip']} tests")
    total_stock = total_ours = 0
    regressions = []
    for label, module in modules.items():
        passed = sorted(key for key, outcome in stock.items() if key[0] == module and outcome.status == "passed")
        also = [key for key in passed if ours.get(key, Outcome("missing")).status == "passed"]
        total_stock, total_ours = total_stock + len(passed), total_ours + len(also)
        counts = {s: sum(1 for k, o in stock.items() if k[0] == module and o.status == s) for s in ("failed", "skipped")}
        print(f"{label:11s} {module}: stock passes {len(passed)}, dualclip passes {len(also)} of those "
              f"(stock also fails {counts['failed']}, skips {counts['skipped']})")
        for key in passed:
            if key not in also:
                outcome = ours.get(key, Outcome("missing", "not run for dualclip"))
                regressions.append(key)
                print(f"    {key[1]}: {outcome.status}: {outcome.reason}")
        if args.stock_failures:
            for key, outcome in sorted(stock.items()):
                if key[0] == module and outcome.status == "failed":
                    print(f"    stock fails {key[1]}: {outcome.reason}")
    print(f"total: stock passes {total_stock}, dualclip passes {total_ours} of those")
    if temporary is not None:
        temporary.cleanup()
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())

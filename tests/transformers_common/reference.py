"""transformers' `tests/test_modeling_common.py`, taken from the sdist of the installed transformers.

The file is not part of the wheel, and it is not ours to copy into this repository: it is downloaded once per
transformers version with pip (`pip download --no-deps --no-binary :all: transformers==X`) and unpacked into
`~/.cache/dualclip-conformance/X/tests-<fingerprint>/transformers_tests/` (`DUALCLIP_CONFORMANCE_CACHE` moves the
cache), a package that test code imports after putting its parent folder on `sys.path`.

The sdist ships only the top level of transformers' `tests/` folder. `test_modeling_common.py` imports two modules
from its subfolders, which are written here as stand-ins (see `STAND_INS`): the export tests
(`ExportTesterMixin`, torch.export / ONNX / ExecuTorch) are therefore not part of the conformance run.
"""

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

PACKAGE = "transformers_tests"
CACHE_ENV = "DUALCLIP_CONFORMANCE_CACHE"
# What we take from the sdist's tests/ folder.
REFERENCE_FILES = ("test_modeling_common.py",)
# Modules that test_modeling_common.py imports from tests/ subfolders the sdist does not ship.
STAND_INS = {
    "exporters/__init__.py": "",
    "exporters/test_export.py": '''"""Stand-in (dualclip): tests/exporters/ is not in the transformers sdist.

No export tests (torch.export, ONNX, ExecuTorch) run.
"""


class ExportTesterMixin:
    pass
''',
    "generation/__init__.py": "",
    "generation/test_utils.py": '''"""Stand-in (dualclip): tests/generation/ is not in the transformers sdist.

ModelTesterMixin only checks that testers of models that cannot generate do not inherit this class.
"""


class GenerationTesterMixin:
    pass
''',
}
_COMPLETE = ".complete"


class ReferenceUnavailable(RuntimeError):
    """The reference tests could not be fetched (no network, no PyPI, or the sdist lacks the files)."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dualclip-conformance")


def reference_dir(version: str = transformers.__version__) -> Path:
    """The folder to put on `sys.path` to import `transformers_tests.test_modeling_common`; fetched if missing.

    `<cache>/<version>/` keeps the sdist; the package is unpacked beside it in a folder named after what we take and
    the stand-ins' text, so changing either here unpacks afresh.
    """
    folder = cache_root() / version
    fingerprint = hashlib.sha256(repr((REFERENCE_FILES, sorted(STAND_INS.items()))).encode()).hexdigest()[:12]
    target = folder / f"tests-{fingerprint}"
    if (target / PACKAGE / _COMPLETE).exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    sdist = folder / f"transformers-{version}.tar.gz"
    with tempfile.TemporaryDirectory(dir=folder, prefix=".staging-") as work:
        work = Path(work)
        if not sdist.exists():
            os.replace(_download_sdist(version, work / "download"), sdist)  # atomic: complete or absent
        staged = work / "staged"
        _unpack(sdist, version, staged / PACKAGE)
        (staged / PACKAGE / _COMPLETE).write_text(f"from {sdist.name}\n")
        try:
            staged.rename(target)  # atomic; another process may have won the race, which is just as good
        except OSError:
            if not (target / PACKAGE / _COMPLETE).exists():
                raise
    return target


def _download_sdist(version: str, folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"transformers=={version}", "--dest", str(folder)]
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired as error:
        raise ReferenceUnavailable(f"`{' '.join(command[2:])}` timed out") from error
    found = sorted(folder.glob(f"transformers-{version}.tar.gz")) if folder.exists() else []
    if result.returncode != 0 or not found:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ReferenceUnavailable(f"`{' '.join(command[2:])}` failed: {detail[-1] if detail else result.returncode}")
    return found[0]


def _unpack(sdist: Path, version: str, package: Path) -> None:
    package.mkdir(parents=True)
    with tarfile.open(sdist) as archive:
        for name in REFERENCE_FILES:
            try:
                member = archive.getmember(f"transformers-{version}/tests/{name}")
            except KeyError as error:
                raise ReferenceUnavailable(f"{sdist.name} has no tests/{name}") from error
            source = archive.extractfile(member)
            (package / name).write_bytes(source.read())
    # tests/__init__.py is empty upstream too (it makes the relative imports of the test files work).
    (package / "__init__.py").write_text("")
    for relative, text in STAND_INS.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


if __name__ == "__main__":
    print(reference_dir())

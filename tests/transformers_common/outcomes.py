"""Runs the conformance suite in a subprocess and compares stock and dualclip outcomes, test by test."""

import dataclasses
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import transformers

from . import reference

SUITE = Path(__file__).with_name("suite.py")
REPOSITORY = SUITE.parents[2]
# Kept in step with suite.COUNTERPARTS (not imported from there: the suite needs the fetched reference tests).
COUNTERPARTS = {
    "CLIPModel": "DualClipModel",
    "CLIPTextModel": "DualClipTextModel",
    "CLIPTextModelWithProjection": "DualClipTextModelWithProjection",
    "CLIPVisionModel": "DualClipVisionModel",
    "CLIPVisionModelWithProjection": "DualClipVisionModelWithProjection",
}
# Stock CLIP passes about 500 of the suite's tests (498 with transformers 5.24.0, 488 with 5.23.0). Far fewer means
# the harness broke (an import, a tester), not that the rule holds.
MIN_STOCK_PASSES = 300


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: str  # "passed", "failed" or "skipped"; a test whose subtest failed has failed
    reason: str = ""  # first line of the failure or skip message


@dataclasses.dataclass
class Comparison:
    stock: dict  # (stock class, test name) -> Outcome
    dualclip: dict  # (stock class, test name) -> Outcome of the same test on the dualclip counterpart

    @property
    def stock_passes(self):
        return sorted(key for key, outcome in self.stock.items() if outcome.status == "passed")

    @property
    def dualclip_passes(self):
        """The tests that pass for stock and pass for dualclip."""
        return [key for key in self.stock_passes if self.dualclip.get(key, Outcome("missing")).status == "passed"]

    @property
    def regressions(self):
        """(stock class, test, dualclip Outcome) for every test that passes for stock and not for dualclip."""
        return [(*key, self.dualclip.get(key, Outcome("missing", "not run for dualclip")))
                for key in self.stock_passes if key not in set(self.dualclip_passes)]

    def summary(self) -> str:
        return (f"transformers common model tests: stock passes {len(self.stock_passes)}, "
                f"dualclip passes {len(self.dualclip_passes)} of those {len(self.stock_passes)}")

    def report(self, stock_failures: bool = False) -> str:
        lines = [f"{self.summary()} (transformers {transformers.__version__}, tests/test_modeling_common.py "
                 f"from its sdist)"]
        regressions = self.regressions
        if regressions:
            lines.append(f"passes for stock, not for dualclip ({len(regressions)}), by reason:")
            by_reason = {}
            for cls, test, outcome in regressions:
                by_reason.setdefault((outcome.status, outcome.reason), []).append(f"{COUNTERPARTS[cls]}::{test}")
            for (status, reason), tests in sorted(by_reason.items(), key=lambda item: -len(item[1])):
                lines.append(f"  {status} ({len(tests)}): {reason}")
                lines += [f"    {test}" for test in tests]
        if stock_failures:
            failed = sorted((key, outcome) for key, outcome in self.stock.items() if outcome.status == "failed")
            lines.append(f"fails for stock, so not required of dualclip ({len(failed)}):")
            lines += [f"  {cls}::{test} {outcome.reason}" for (cls, test), outcome in failed]
        return "\n".join(lines)


_RANK = {"skipped": 0, "passed": 1, "failed": 2}


class SuiteDidNotRun(RuntimeError):
    pass


def run_suite(junit_xml: Path, extra_args=(), timeout: float = 900) -> subprocess.CompletedProcess:
    """Runs suite.py (stock and dualclip classes) in a fresh interpreter, writing junit XML."""
    # a fresh session: nothing of an enclosing pytest (xdist worker ids, the current test) leaks into it
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(reference.reference_dir()), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", "--no-header",
               "-rN", "-o", "junit_family=xunit1", f"--junitxml={junit_xml}", str(SUITE), *extra_args]
    return subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=timeout)


def read_outcomes(junit_xml: Path) -> dict:
    """(test class, test name) -> Outcome, from pytest's junit XML (subtest reports merged into their test)."""
    outcomes = {}
    for case in ElementTree.parse(junit_xml).getroot().iter("testcase"):
        key = (case.get("classname", "").rpartition(".")[2].removesuffix("Test"), case.get("name", ""))
        status, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                status, reason = "failed", _first_line(child.get("message") or child.text)
                break
            if child.tag == "skipped":
                status, reason = "skipped", _first_line(child.get("message") or child.text)
        # subtests may add entries under the same name: failed wins over passed, passed over skipped
        previous = outcomes.get(key)
        if previous is None or _RANK[status] > _RANK[previous.status]:
            outcomes[key] = Outcome(status, reason)
    return outcomes


def compare(outcomes: dict) -> Comparison:
    dualclip_names = {dual: stock for stock, dual in COUNTERPARTS.items()}
    stock, dualclip = {}, {}
    for (cls, test), outcome in outcomes.items():
        if cls in COUNTERPARTS:
            stock[cls, test] = outcome
        elif cls in dualclip_names:
            dualclip[dualclip_names[cls], test] = outcome
    return Comparison(stock, dualclip)


def run_and_compare(extra_args=(), keep: Path | None = None) -> Comparison:
    with tempfile.TemporaryDirectory() as folder:
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
        junit_xml = (keep or Path(folder)) / "transformers-common.xml"
        result = run_suite(junit_xml, extra_args)
        outcomes = read_outcomes(junit_xml) if junit_xml.exists() else {}
    comparison = compare(outcomes)
    if len(comparison.stock_passes) < MIN_STOCK_PASSES and not extra_args:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-40:])
        raise SuiteDidNotRun(f"stock passed only {len(comparison.stock_passes)} tests (exit {result.returncode}); "
                             f"output:\n{tail}")
    return comparison


def _first_line(text) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= 240 else line[:237] + "..."
    return ""

"""transformers' own common model tests (`ModelTesterMixin`) as dualclip's conformance suite.

The rule: every common test that passes for a stock CLIP class passes for its dualclip counterpart
(CLIPModel -> DualClipModel, CLIPTextModel -> DualClipTextModel, ... all five), built from configs of the same
values. `tests/test_modeling_common.py` comes from the sdist of the installed transformers version, fetched once into
`~/.cache/dualclip-conformance/<version>/` (see transformers_common/reference.py); the testers are ours
(transformers_common/suite.py), with the configurations of transformers' CLIP tests.

Both sets run in one subprocess (junit XML), then outcomes are compared test by test. The counts appear in pytest's
warnings summary ("transformers common model tests: stock passes N, dualclip passes M of those N").

    python -m pytest -q -p no:xdist tests/test_transformers_common.py
    python tests/test_transformers_common.py --report             # counts + each failing test with its reason
    python tests/test_transformers_common.py --report --stock-failures -- -k TextModel   # pytest args after --
"""

import argparse
import sys
import warnings
from pathlib import Path

import pytest

from transformers_common import outcomes, reference


class ConformanceSummary(UserWarning):
    """Carries the counts into pytest's warnings summary, which -q and pytest-xdist both show."""


@pytest.fixture(scope="session")
def reference_tests() -> Path:
    try:
        return reference.reference_dir()
    except reference.ReferenceUnavailable as error:
        pytest.skip(f"transformers' common model tests could not be fetched from PyPI: {error}")


def test_dualclip_passes_every_common_test_that_stock_passes(reference_tests):
    comparison = outcomes.run_and_compare()
    warnings.warn(comparison.summary(), ConformanceSummary)
    if comparison.regressions:
        pytest.fail(comparison.report(), pytrace=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="print the counts and every regression (default)")
    parser.add_argument("--stock-failures", action="store_true", help="also list the tests stock fails")
    parser.add_argument("--keep", type=Path, help="folder to keep the suite's junit XML in")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments for the suite (after --)")
    args = parser.parse_args(argv)
    try:
        comparison = outcomes.run_and_compare(args.pytest_args, keep=args.keep)
    except (reference.ReferenceUnavailable, outcomes.SuiteDidNotRun) as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(comparison.report(stock_failures=args.stock_failures))
    return 1 if comparison.regressions else 0


if __name__ == "__main__":
    sys.exit(main())

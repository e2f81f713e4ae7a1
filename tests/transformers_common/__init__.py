"""transformers' own common model tests, run on stock CLIP and on dualclip (see tests/test_transformers_common.py).

- `reference`: fetches `tests/test_modeling_common.py` from the sdist of the installed transformers into a cache
  outside the repository and makes it importable as the package `transformers_tests`.
- `suite`: our model testers (transformers' CLIP test configurations) and one test class per model class, stock and
  dualclip. Collected only when named on the command line (its file name does not match `test_*.py`).
- `outcomes`: reads the suite's junit XML and compares per-test outcomes (stock passed -> dualclip must pass).
"""

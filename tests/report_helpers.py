"""Comparing reports produced by different processes (CLI, API server, batch scans)."""
from __future__ import annotations

import pytest

# Probabilities are rounded to 4 decimals; two processes may differ in the last digit (thread counts
# change the order of float sums), never by more.
PROBABILITY_TOLERANCE = 1e-3


def assert_reports_match(a, b, ignore=("input",), where: str = "report") -> None:
    """Same structure, same strings and integers, floats within PROBABILITY_TOLERANCE."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys_a, keys_b = set(a) - set(ignore), set(b) - set(ignore)
        assert keys_a == keys_b, f"{where}: keys differ: {sorted(keys_a ^ keys_b)}"
        for key in sorted(keys_a):
            assert_reports_match(a[key], b[key], (), f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_reports_match(x, y, (), f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=PROBABILITY_TOLERANCE), f"{where}: {a} vs {b}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"

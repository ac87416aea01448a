"""Experiment (issue 11's install rules): `evaluate.py --stability` with `stability.py`'s four-decimal
rounding switched off, to tell which side of a rule's bound a figure printed at the bound lies on
(session 28: a val re-cut p95 printed as 0.1 against the rule's 0.10 was 0.09996). Every argument goes
to evaluate.py; the crops and views are the same as its own run's (same seed), so mean and max match
it to four decimals.

    .venv/bin/python scripts/experiments/unrounded_stability.py --data-dir ../shared/datasets/dfdc-faces \
        --split val --stability --max-samples 200 [--models-dir DIR] --json
"""
import builtins
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import stability  # noqa: E402

# stability.py rounds with round(x, 4); shadowing the builtin in that module keeps full precision.
stability.round = lambda x, digits=None: float(x) if digits is not None else builtins.round(x)
sys.argv = [str(ROOT / "evaluate.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "evaluate.py"), run_name="__main__")

"""Experiment: is one checkpoint's val AUC above another's by more than noise?

(`scripts/judge_candidate.py` reports the same figure for its candidate; this compares any two.)
Session 31 asked this of the install rules' `>=` on a candidate's converted val AUC; since session
32 the member rule reads this figure (docs/training.md). Both are scored on the same faces, so the
question is the noise of their *difference*, not of each AUC alone. This resamples the faces (real
and fake apart, so every draw keeps the split's balance) and reports the difference of the two AUCs
on each draw: its mean, 90 % interval, and the share of draws where the candidate is not lower. Inputs are the `eval_logits.npz`
files that `convert_models.py --runs-dir` caches (the judge's `evalcache/<key>/`).

    .venv/bin/python scripts/experiments/paired_auc.py \\
        runs/rc30/judge_enc6/evalcache/cnn_transformer/eval_logits.npz \\
        runs/rc31/judge_ct/evalcache/cnn_transformer/eval_logits.npz --split val
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from metrics import paired_auc_of_evaluations  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="eval_logits.npz of the installed model")
    p.add_argument("candidate", help="eval_logits.npz of the candidate")
    p.add_argument("--split", default="val", choices=["val", "test", "cross_dataset"])
    p.add_argument("--draws", type=int, default=2000)
    a = p.parse_args(argv)
    base, cand = np.load(a.base, allow_pickle=False), np.load(a.candidate, allow_pickle=False)
    try:
        out = paired_auc_of_evaluations(base, cand, a.split, draws=a.draws)
    except ValueError as e:          # a clear message, not a traceback
        raise SystemExit(str(e)) from None
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

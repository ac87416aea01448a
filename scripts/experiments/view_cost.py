"""Measurement (session 38): what more test-time views cost each voter.

Times `ScoringEngine.model_logits` for every voting member on the same 100 face crops as
`view_batch_size.py` (the benchmark's astronaut, each cut a few pixels apart), once with four views
(`scoring.tta_views`: the crop and its mirror, each moved a pixel right and down) and once with the
eight of `phase_tta.eight_views` (each moved 0-3 pixels), alternating the two, whatever the registry
installs, and prints the median of `--runs` runs of each member and view set, and the voters' total
for four views on every voter, for every per-member set of `phase_tta.PER_MEMBER` (eight views for
the members it names, four for the others) and for eight on every voter. Run it on an
idle machine (stop any training with `kill -STOP` first).

    .venv/bin/python scripts/experiments/view_cost.py --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from phase_tta import PER_MEMBER, eight_views  # noqa: E402
from scoring import tta_views  # noqa: E402
from view_batch_size import timing_setup  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    engine, faces, voters = timing_setup(a.threads)
    sets = {"four": dict.fromkeys(voters, tta_views), "eight": dict.fromkeys(voters, eight_views)}
    times = {name: {k: [] for k in voters} for name in sets}
    for key in voters:                       # warm-up: the first call of a model pays for its set-up
        engine.model_logits(key, faces[:4])
    for _ in range(a.runs):
        for name, views in sets.items():
            engine.views = views
            for key in voters:
                t = time.perf_counter()
                engine.model_logits(key, faces)
                times[name][key].append(time.perf_counter() - t)
    engine.views = {}
    median = {name: {k: float(np.median(v)) for k, v in per.items()} for name, per in times.items()}
    four_total = sum(median["four"].values())
    totals = {"four views for every voter": four_total}
    for variant, members in PER_MEMBER.items():
        totals[variant] = sum(median["eight" if k in members else "four"][k] for k in voters)
    totals["eight views for every voter"] = sum(median["eight"].values())
    print(json.dumps({
        "faces": len(faces), "threads": a.threads, "runs": a.runs,
        "member_seconds": {name: {k: {"runs": [round(x, 3) for x in times[name][k]], "median": round(m, 3)}
                                  for k, m in per.items()} for name, per in median.items()},
        "voters_seconds": {v: round(s, 3) for v, s in totals.items()},
        "voters_rise": {v: round(s / four_total - 1, 3) for v, s in totals.items()},
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

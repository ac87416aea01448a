"""Experiment (issue 11, session 14): how much do the stability checks' JPEG-75 versions change a
`dfdc-faces` crop? Mean |difference| in grey levels, over `--n` crops of `--split`, of the crop
re-saved on its own 8x8 grid (`stability.jpeg`), off it (`stability.jpeg_off_grid`, the re-cut
check's view) and inside the re-framing check's JPEG canvas (`stability.canvas_versions`).

    .venv/bin/python scripts/experiments/jpeg_grid.py --n 30
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import data_handler  # noqa: E402
import stability  # noqa: E402
from evaluate import _read_crop  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "dfdc-faces"))
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=30)
    a = p.parse_args()
    records = data_handler.load_records(a.data_dir, seed=0)
    rows = records[records["split"] == a.split].sample(n=a.n, random_state=0)
    changes: dict[str, list[float]] = {"on its grid": [], "off its grid (re-cut view)": [], "in the JPEG canvas": []}
    for crop in (c for c in (_read_crop(path) for path in rows["path"]) if c is not None):
        size = crop.shape[0]
        x, y = stability.canvas_corners(size)[-1]
        in_canvas = stability.canvas_versions(crop)[-1][y:y + size, x:x + size]
        for name, version in zip(changes, (stability.jpeg(crop), stability.jpeg_off_grid(crop), in_canvas)):
            changes[name].append(float(np.abs(version.astype(int) - crop).mean()))
    for name, values in changes.items():
        print(f"{name:28s} mean |d| {np.mean(values):.3f} grey levels (max {np.max(values):.3f}, {len(values)} crops)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

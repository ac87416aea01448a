"""Experiment (issue 11): does a box that MTCNN's last stage (O-Net) agrees on from many nearby starting
squares make the re-framing check steadier than the box MTCNN returns?

O-Net re-regressing one box is not a fixed point (docs/performance.md: a box moved by a few pixels
comes back moved by a few pixels). Here each found box is squared and perturbed into a grid of
candidates (shifts and scales of a few % of its side); O-Net regresses every candidate and the
regressed boxes are averaged (`faces.settle_boxes`, which ships the 7-candidate cross). If O-Net's error for a candidate is partly independent of the next
candidate's, the average moves less with the framing than any one regression.

Measured like `stability.reframing` (each crop on a grey canvas four ways, faces found, crops cut,
scored by the installed voters): per face, the spread (max - min) over its versions of the box
(centre and side, in units of its side) and of the ensemble P(fake), and the ensemble AUC over all
versions, for each way of settling the box. Choose on `val`; `test` only reports.

    .venv/bin/python scripts/experiments/box_consensus.py --split val --n 200
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import data_handler  # noqa: E402
import faces  # noqa: E402
import stability  # noqa: E402
from evaluate import _read_crop  # noqa: E402
from scoring import ScoringEngine  # noqa: E402


def candidate_grid(shift: float, scales: tuple[float, ...], steps: int = 3) -> list[tuple[float, float, float]]:
    offsets = np.linspace(-shift, shift, steps) if steps > 1 else [0.0]
    return [(dx, dy, s) for s in scales for dx in offsets for dy in offsets]


def consensus_box(mtcnn, image: np.ndarray, box, grid, rounds: int = 1):
    """`faces.settle_boxes` with another candidate grid, repeated `rounds` times."""
    box = np.asarray(box, np.float64).reshape(1, 4)
    with torch.inference_mode():
        for _ in range(rounds):
            box, _ = faces.settle_boxes(mtcnn.onet, image, box, grid)
    return tuple(float(v) for v in box[0])


METHODS = {
    "as found": None,
    "same box (oracle)": "oracle",      # the centred version's box in every version: what is left is JPEG
    "O-Net once": dict(grid=[(0.0, 0.0, 1.0)], rounds=1),
    "O-Net x3": dict(grid=[(0.0, 0.0, 1.0)], rounds=3),
    "cross 7 +-8%, 0.9-1.1 (shipped)": dict(grid=faces.CONSENSUS_CANDIDATES, rounds=1),
    "grid 3x3 +-8%": dict(grid=candidate_grid(0.08, (1.0,)), rounds=1),
    "grid 3x3x3 +-8%, 0.9-1.1": dict(grid=candidate_grid(0.08, (0.9, 1.0, 1.1)), rounds=1),
    "grid 3x3x3 +-12%, 0.85-1.15": dict(grid=candidate_grid(0.12, (0.85, 1.0, 1.15)), rounds=1),
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "dfdc-faces"))
    p.add_argument("--split", default="val")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="*", default=None, help="default: the ensemble's voters")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    engine = ScoringEngine(ROOT / "converted_models")
    keys = a.models or [k for k in engine.loaded_keys if k not in engine.advisory_keys]
    records = data_handler.load_records(a.data_dir, seed=0)
    rows = records[records["split"] == a.split].sample(n=a.n, random_state=0)
    detector = faces.FaceDetector(consensus=False)     # MTCNN's boxes as found; each method settles them
    mtcnn = detector._mtcnn
    results = {m: {"box": [], "p": [], "labels": [], "scores": []} for m in METHODS}
    t0 = time.time()
    for done, (path, label) in enumerate(zip(rows["path"], rows["label"])):
        crop = _read_crop(path)
        versions = stability.canvas_versions(crop)
        found = [detector.detect([v])[0] for v in versions]
        if not all(found):
            continue
        corners = stability.canvas_corners(crop.shape[0])     # the crop's top-left corner in each version
        for name, how in METHODS.items():
            if how == "oracle":
                x1, y1, x2, y2 = found[0][0].box
                boxes = [(x1 - corners[0][0] + x0, y1 - corners[0][1] + y0, x2 - corners[0][0] + x0,
                          y2 - corners[0][1] + y0) for x0, y0 in corners]
            else:
                ts = time.perf_counter()
                boxes = [f[0].box if how is None else consensus_box(mtcnn, v, f[0].box, **how)
                         for v, f in zip(versions, found)]
                results[name].setdefault("ms", []).append((time.perf_counter() - ts) * 1000 / len(versions))
            local = np.array([[b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0] for b, (x0, y0) in zip(boxes, corners)])
            side = ((local[:, 2] - local[:, 0]) + (local[:, 3] - local[:, 1])) / 2
            centre = np.stack([(local[:, 0] + local[:, 2]) / 2, (local[:, 1] + local[:, 3]) / 2], 1)
            ref = side.mean()
            results[name]["box"].append([np.ptp(centre[:, 0]) / ref, np.ptp(centre[:, 1]) / ref, np.ptp(side) / ref])
            crops = [faces.crop_face(v, b) for v, b in zip(versions, boxes)]
            probs = engine.score_crops(crops, keys).ensemble_probability
            results[name]["p"].append(float(np.ptp(probs)))
            results[name]["scores"].extend(float(q) for q in probs)
            results[name]["labels"].extend([int(label in ("fake", 1, "1"))] * len(probs))
        if done % 20 == 0:
            print(f"{done}/{len(rows)} crops, {time.time() - t0:.0f} s", flush=True)
    summary = {}
    for name, r in results.items():
        box = np.array(r["box"])
        p_ = np.array(r["p"])
        summary[name] = {"faces": len(p_), "box_spread_mean": box.mean(0).round(4).tolist(),
                         "p_spread_mean": round(float(p_.mean()), 4),
                         "p_spread_p95": round(float(np.quantile(p_, 0.95)), 4),
                         "p_spread_max": round(float(p_.max()), 4),
                         "auc": round(float(roc_auc_score(r["labels"], r["scores"])), 4),
                         "ms_per_box": round(float(np.mean(r.get("ms", [0.0]))), 2)}
        print(f"{name:>28}: box spread cx/cy/side {summary[name]['box_spread_mean']}, ensemble P spread "
              f"mean/p95/max {summary[name]['p_spread_mean']:.3f}/{summary[name]['p_spread_p95']:.3f}/"
              f"{summary[name]['p_spread_max']:.3f}, AUC {summary[name]['auc']:.3f}, {summary[name]['ms_per_box']:.1f} ms/box ({summary[name]['faces']} faces)")
    if a.json:
        Path(a.json).write_text(json.dumps({"split": a.split, "n": a.n, "voters": keys, "methods": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Experiment (issue 11, session 11): what the face-size-independent box does to the scores of small
faces.

Each crop is put on a grey canvas (1.5x, as in the re-framing check; the face's box ~230 px), and the
canvas is also downscaled (area filter) so that the face is ~60 px and ~110 px, as in a 720p video or a
phone photo of a group. MTCNN finds the face in each; its box is settled two ways: on the image as it
is (sessions 9-10: `faces.settle_boxes`), and on a patch resampled so the face is 224 px (session 11:
`faces.settle_boxes_at_face_size`); each box is cut (`faces.crop_face`, from the image at that size)
and scored by the installed voters. Reported per face size and way: the mean ensemble P(fake) of
real and of fake faces, the AUC, and the mean |dP| against the same face on the full-size canvas.
Choose on `val`; `test` only reports.

    .venv/bin/python scripts/experiments/small_faces.py --split val --n 200
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
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

FACE_SIDES = (60, 110)
WAYS = {"as it is": lambda onet, img, box: faces.settle_boxes(onet, img, box[None])[0][0],
        "at 224 px": lambda onet, img, box: faces.settle_boxes_at_face_size(onet, img, box[None])[0][0]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "dfdc-faces"))
    p.add_argument("--split", default="val")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    engine = ScoringEngine(ROOT / "converted_models")
    keys = [k for k in engine.loaded_keys if k not in engine.advisory_keys]
    records = data_handler.load_records(a.data_dir, seed=0)
    rows = records[records["split"] == a.split].sample(n=a.n, random_state=0)
    raw = faces.FaceDetector(consensus=False)
    onet = raw._mtcnn.onet
    scores: dict[tuple, list] = {}
    labels: list[int] = []
    for path, label in zip(rows["path"], rows["label"]):
        canvas = stability.canvas_versions(_read_crop(path))[0]
        found = raw.detect([canvas])[0]
        if not found:
            continue
        side = float(np.mean([found[0].box[2] - found[0].box[0], found[0].box[3] - found[0].box[1]]))
        images = {"full": canvas}
        for target in FACE_SIDES:
            k = target / side
            images[target] = cv2.resize(canvas, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
        boxes = {size: raw.detect([img])[0] for size, img in images.items()}
        if not all(boxes.values()):
            continue
        crops, names = [], []
        with torch.inference_mode():
            for size, img in images.items():
                box = np.array(boxes[size][0].box)
                for way, settle in WAYS.items():
                    crops.append(faces.crop_face(img, settle(onet, img, box)))
                    names.append((size, way))
        probs = engine.score_crops(crops, keys).ensemble_probability
        for name, q in zip(names, probs):
            scores.setdefault(name, []).append(float(q))
        labels.append(int(label in ("fake", 1, "1")))
    y = np.array(labels)
    reference = np.array(scores[("full", "at 224 px")])
    out = {"split": a.split, "faces": int(len(y)), "voters": keys, "rows": []}
    print(f"{len(y)} faces ({y.sum()} fake), ensemble of {', '.join(keys)}")
    print("face size | settled | mean P real | mean P fake | AUC | mean |dP| vs full size")
    for (size, way), s in scores.items():
        s = np.array(s)
        row = {"face_px": size, "settled": way, "p_real": round(float(s[y == 0].mean()), 4),
               "p_fake": round(float(s[y == 1].mean()), 4), "auc": round(float(roc_auc_score(y, s)), 4),
               "dp_vs_full": round(float(np.abs(s - reference).mean()), 4)}
        out["rows"].append(row)
        print(f"{str(size):>9} | {way:>9} | {row['p_real']:.3f} | {row['p_fake']:.3f} | {row['auc']:.4f} | {row['dp_vs_full']:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

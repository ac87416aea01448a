"""How much does a score move when nothing about the face changes? (issue 11)

Two measurements, both printed by `evaluate.py`:

* `crop_views` / `stability` (`evaluate.py --stability`): each test crop is re-cut as a detector might
  have cut it (centre shifted by 5 % of the side, side 5 % larger or smaller), resized with the other
  filter (bilinear straight to each model's own input instead of area averaging), and re-saved as JPEG
  quality 75 off its block grid (`jpeg_off_grid`). For each model and the ensemble: mean, 95th
  percentile and max of |P(view) - P(crop)|.
* `reframing` (`evaluate.py --reframing`): the check as first reported, end to end through face
  finding. Each crop is placed on a grey canvas four ways (1.5x its size centred; 1.45x and 1.55x
  shifted by a few pixels; the centred one re-saved as JPEG 75) and analysed like an uploaded photo;
  per face, the spread (max - min) of the ensemble P(fake) over its versions.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from registry import ENSEMBLE_KEY

SHIFT = 0.05
SCALE = 0.05
JPEG_QUALITY = 75


def recut(crop: np.ndarray, dx: float, dy: float, scale: float) -> np.ndarray:
    """The square of side `scale` * side centred `dx`, `dy` sides away from the crop's centre, cut from
    the crop (borders mirrored where it reaches outside) and resized back with INTER_CUBIC, as
    `faces.crop_face` upsamples."""
    size = crop.shape[0]
    side = size * scale
    cx, cy = size / 2 + dx * size, size / 2 + dy * size
    matrix = np.array([[side / size, 0, cx - side / 2], [0, side / size, cy - side / 2]], np.float32)
    return cv2.warpAffine(crop, matrix, (size, size), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)


def jpeg(crop: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """The image saved as JPEG and decoded, on its own 8x8 block grid."""
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


# Half a block: the re-save's grid lies across the source's blocks (and across 4:2:0 chroma's 16 px).
OFF_GRID = 4


def jpeg_off_grid(crop: np.ndarray, quality: int = JPEG_QUALITY, offset: int = OFF_GRID) -> np.ndarray:
    """The crop re-saved as JPEG on a block grid `offset` pixels off its own, as happens when a photo is
    cropped or re-framed and saved again. Why not on its own grid: the `dfdc-faces` crops are JPEG 75
    themselves, and re-saving a JPEG at its own quality on its own grid is nearly lossless (a
    thousandth of a grey level on average; off it, 1.5: scripts/experiments/jpeg_grid.py), so that
    view would measure nothing and dilute the pooled figures."""
    padded = np.pad(crop, ((offset, 0), (offset, 0), (0, 0)), mode="reflect")
    return np.ascontiguousarray(jpeg(padded, quality)[offset:, offset:])


# Views whose pixels are the crop's own and whose change is how each model resamples them to its own
# input size (models may differ in size): scored with this cv2 interpolation instead of training's.
VIEW_INTERPOLATION = {"filter": cv2.INTER_LINEAR}


def crop_views(crop: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Perturbed versions of one crop, named by what changed ("filter" is the crop itself, resampled
    by `VIEW_INTERPOLATION` when it is scored)."""
    sx, sy = rng.choice([-1.0, 1.0], size=2)
    return {
        "shift": recut(crop, sx * SHIFT, sy * SHIFT, 1.0),
        "larger": recut(crop, 0.0, 0.0, 1.0 + SCALE),
        "smaller": recut(crop, 0.0, 0.0, 1.0 - SCALE),
        "filter": crop,
        "jpeg75": jpeg_off_grid(crop),
    }


P95_CI_LEVEL = 0.90
P95_CI_RESAMPLES = 2000


def p95_interval(diffs: np.ndarray, level: float = P95_CI_LEVEL, resamples: int = P95_CI_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the 95th percentile of |dP|. Rows are the units drawn (faces): a face's views
    move together, so resampling faces, not single views, keeps the interval honest; a 1-D array is one
    value per face. On 40 faces the 95th percentile is about the second largest, so the interval is wide
    and says whether a figure near a target is above it or only noise."""
    rows = np.abs(np.asarray(diffs, np.float64))
    rows = rows.reshape(len(rows), -1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(rows), size=(resamples, len(rows)))
    p95s = np.quantile(rows[picks].reshape(resamples, -1), 0.95, axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(p95s, [tail, 1 - tail])
    return round(float(lo), 4), round(float(hi), 4)


def dp_summary(diffs: np.ndarray) -> dict:
    """mean, 95th percentile (with `p95_interval`'s bootstrap interval) and max of |dP|; rows of a 2-D
    `diffs` are faces, columns their views."""
    rows = np.abs(np.asarray(diffs, np.float64))
    flat = rows.ravel()
    out = {"mean": round(float(flat.mean()), 4), "p95": round(float(np.quantile(flat, 0.95)), 4),
           "max": round(float(flat.max()), 4), "n": int(flat.size)}
    if len(rows) > 1:
        out[f"p95_ci{round(P95_CI_LEVEL * 100)}"] = list(p95_interval(rows))
    return out


def view_diffs(engine, crops: list[np.ndarray], keys: list[str], make_views, batch: int = 64) -> dict:
    """P(view) - P(crop) for every model in `keys` and the ensemble, as {key: {view name: one value per
    crop}}; `make_views(crop)` gives each crop's named views (the same names for every crop), scored
    with `VIEW_INTERPOLATION`'s resampling where it names the view."""
    diffs: dict[str, dict[str, list]] = {k: {} for k in [*keys, ENSEMBLE_KEY]}
    for start in range(0, len(crops), batch):
        part = crops[start:start + batch]
        views = [make_views(c) for c in part]
        base = engine.score_crops(part, keys)
        for name in views[0]:
            moved = engine.score_crops([v[name] for v in views], keys, VIEW_INTERPOLATION.get(name))
            for k in keys:
                diffs[k].setdefault(name, []).append(moved.model_probabilities[k] - base.model_probabilities[k])
            diffs[ENSEMBLE_KEY].setdefault(name, []).append(moved.ensemble_probability - base.ensemble_probability)
    return {k: {name: np.concatenate(v) for name, v in by_view.items()} for k, by_view in diffs.items()}


def faces_by_views(by_view: dict[str, np.ndarray]) -> np.ndarray:
    """`view_diffs`' values of one key as a faces x views array, the shape `dp_summary` resamples by face."""
    return np.stack(list(by_view.values()), axis=1)


def stability(engine, crops: list[np.ndarray], models=None, seed: int = 0, batch: int = 64) -> dict:
    """|dP| between each crop and its views, for every model and the ensemble (see module doc)."""
    keys = [k for k in (models or engine.loaded_keys) if k in engine.models]
    rng = np.random.default_rng(seed)
    diffs = view_diffs(engine, crops, keys, lambda c: crop_views(c, rng), batch)
    return {k: {**dp_summary(faces_by_views(by_view)),
                "by_view": {name: round(float(np.abs(v).mean()), 4) for name, v in by_view.items()}}
            for k, by_view in diffs.items()}


# The re-framing check's canvases: (canvas side / crop side, dx, dy); the first is also re-saved as JPEG.
CANVAS_PLACEMENTS = ((1.5, 0, 0), (1.45, 3, -2), (1.55, -4, 3))


def canvas_corners(size: int) -> list[tuple[int, int]]:
    """Where a crop of side `size` sits (top-left x, y) in each of `canvas_versions`' versions."""
    corners = []
    for factor, dx, dy in CANVAS_PLACEMENTS:
        side = int(round(size * factor))
        corners.append(((side - size) // 2 + dx, (side - size) // 2 + dy))
    return corners + corners[:1]          # the JPEG version is the centred canvas


def canvas_versions(crop: np.ndarray, grey: int = 128) -> list[np.ndarray]:
    """The crop on a grey canvas: 1.5x centred, 1.45x and 1.55x shifted by a few pixels, and the
    centred one re-saved as JPEG 75."""
    size = crop.shape[0]
    versions = []
    for (factor, _, _), (x, y) in zip(CANVAS_PLACEMENTS, canvas_corners(size)):
        side = int(round(size * factor))
        canvas = np.full((side, side, 3), grey, np.uint8)
        canvas[y:y + size, x:x + size] = crop
        versions.append(canvas)
    return versions + [jpeg(versions[0])]


def reframing(engine, crops: list[np.ndarray], models=None) -> dict:
    """Spread of the ensemble's (and each model's) P(fake) over each crop's canvas versions, through
    face finding (`pipeline.analyze_image`); a version where no face is found is counted, not scored."""
    from pipeline import analyze_image, build_report

    keys = [k for k in (models or engine.loaded_keys) if k in engine.models]
    spreads: dict[str, list[float]] = {k: [] for k in [*keys, ENSEMBLE_KEY]}
    missed = 0
    for crop in crops:
        scores: dict[str, list[float]] = {k: [] for k in spreads}
        for version in canvas_versions(crop):
            buf = io.BytesIO()
            Image.fromarray(version).save(buf, format="PNG")   # as a user's file: lossless, like the issue's
            report = build_report(analyze_image(buf.getvalue(), engine, name="version.png", models=keys),
                                  engine, models=keys)
            if report["fake_probability"] is None:
                missed += 1
                continue
            scores[ENSEMBLE_KEY].append(report["fake_probability"])
            for k in keys:
                scores[k].append(report["models"][k])
        for k, values in scores.items():
            if len(values) >= 2:
                spreads[k].append(max(values) - min(values))
    return {"faces": len(crops), "versions_without_face": missed,
            **{k: dp_summary(v) for k, v in spreads.items() if v}}

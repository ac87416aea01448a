"""Detection metrics (DeepfakeBench's protocol, GUIDE.md section 5), computed with sklearn."""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def equal_error_rate(labels, scores) -> float:
    """Rate where false-positive and false-negative rates meet on the ROC curve."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2.0)


def binary_metrics(labels, scores, threshold: float = 0.5) -> dict:
    """AUC, AP, EER and accuracy at `threshold` for labels (1 = fake) and P(fake) scores.

    Also each class's own figures, which a ranking metric hides: on the real faces the mean P(fake)
    and the false-positive rate (share at or above `threshold`), on the fakes the mean P(fake) and the
    true-positive rate. They say whether a model that ranks well still calls real people fake.
    With a single class present AUC/AP/EER are undefined and reported as NaN, not invented; a class
    that is absent gets NaN for its own figures.
    """
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    out = {"n": int(labels.size), "n_fake": int(labels.sum()),
           "accuracy": float(np.mean((scores >= threshold) == (labels == 1))) if labels.size else math.nan}
    real, fake = scores[labels == 0], scores[labels == 1]
    out.update(real_mean_p=float(real.mean()) if real.size else math.nan,
               fpr=float(np.mean(real >= threshold)) if real.size else math.nan,
               fake_mean_p=float(fake.mean()) if fake.size else math.nan,
               tpr=float(np.mean(fake >= threshold)) if fake.size else math.nan)
    if labels.size and 0 < labels.sum() < labels.size:
        out.update(auc=float(roc_auc_score(labels, scores)), ap=float(average_precision_score(labels, scores)),
                   eer=equal_error_rate(labels, scores))
    else:
        out.update(auc=math.nan, ap=math.nan, eer=math.nan)
    return out


def video_level_auc(video_ids, labels, scores) -> float:
    """AUC with each video's score = mean of its frame scores (its label = its frames' label)."""
    import pandas as pd

    frame = pd.DataFrame({"video": list(video_ids), "label": np.asarray(labels).astype(int),
                          "score": np.asarray(scores, dtype=np.float64)})
    per_video = frame.groupby("video").agg(label=("label", "max"), score=("score", "mean"))
    if per_video["label"].nunique() < 2:
        return math.nan
    return float(roc_auc_score(per_video["label"], per_video["score"]))


def paired_auc_difference(labels, base, candidate, draws: int = 2000, seed: int = 0) -> dict:
    """AUC(candidate) - AUC(base) for two models scored on the same faces, with its paired 90 %
    bootstrap interval and the share of draws where the candidate is not lower.

    Both AUCs are taken on the same resampled faces in each draw, so what is measured is the noise
    of their *difference*, far smaller than either AUC's own. Real and fake faces are resampled
    apart, so every draw keeps the set's balance (and a small class is never lost). docs/training.md
    (session 32) judges a candidate member by the upper end of this interval.
    """
    labels = np.asarray(labels).astype(int).ravel()
    base, candidate = np.asarray(base, np.float64).ravel(), np.asarray(candidate, np.float64).ravel()
    if not (labels.size == base.size == candidate.size):
        raise ValueError("labels and the two score arrays differ in length: "
                         f"{labels.size}, {base.size}, {candidate.size}")
    rng = np.random.default_rng(seed)
    real, fake = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    diffs = np.empty(draws)
    for i in range(draws):
        idx = np.concatenate([rng.choice(real, real.size), rng.choice(fake, fake.size)])
        diffs[i] = roc_auc_score(labels[idx], candidate[idx]) - roc_auc_score(labels[idx], base[idx])
    lo, hi = np.percentile(diffs, [5, 95])
    return {"difference": float(roc_auc_score(labels, candidate) - roc_auc_score(labels, base)),
            "mean": float(diffs.mean()), "ci90": [float(lo), float(hi)],
            "share_not_lower": float((diffs >= 0).mean()), "draws": draws}


def paired_auc_of_evaluations(base, candidate, split: str = "val", draws: int = 2000) -> dict:
    """`paired_auc_difference` of two cached evaluations (`{split}_labels`, `{split}_logits`, as
    `convert_models.py --runs-dir` caches them). Both must have scored the same faces in the same
    order, or the pairing means nothing."""
    labels = np.asarray(base[f"{split}_labels"])
    if not np.array_equal(labels, candidate[f"{split}_labels"]):
        raise ValueError(f"the two evaluations were not scored on the same {split} faces")
    return {"split": split,
            **paired_auc_difference(labels, base[f"{split}_logits"], candidate[f"{split}_logits"], draws)}

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

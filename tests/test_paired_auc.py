"""metrics.paired_auc_difference (the member install rule's figure since session 32) and the script
that prints it for any two cached evaluations."""
from __future__ import annotations

import numpy as np
import pytest

from metrics import paired_auc_difference, paired_auc_of_evaluations
from script_loader import load_script


def _scores(seed: int, n: int = 400, separation: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n)
    return labels, rng.normal(size=2 * n) + separation * labels


def test_the_same_scores_differ_by_nothing_on_every_draw():
    labels, scores = _scores(0)
    out = paired_auc_difference(labels, scores, scores.copy(), draws=50)
    assert out["difference"] == 0.0 and out["ci90"] == [0.0, 0.0] and out["share_not_lower"] == 1.0


def test_a_clearly_better_candidate_is_above_zero_on_every_draw():
    labels, base = _scores(1, separation=0.5)
    _, better = _scores(2, separation=2.0)
    out = paired_auc_difference(labels, base, better, draws=200)
    assert out["ci90"][0] > 0 and out["share_not_lower"] == 1.0


def test_the_difference_is_the_plain_one_worked_by_hand():
    # Fakes 0.35 and 0.8 against reals 0.1 and 0.4: three of four pairs in order, AUC 0.75; the
    # candidate orders all four, AUC 1.0.
    labels = np.array([0, 0, 1, 1])
    out = paired_auc_difference(labels, np.array([0.1, 0.4, 0.35, 0.8]),
                                           np.array([0.1, 0.2, 0.3, 0.4]), draws=20)
    assert out["difference"] == pytest.approx(0.25)


def test_every_draw_keeps_the_split_balance_so_a_small_class_is_never_lost():
    labels = np.array([0] * 200 + [1] * 3)        # three fakes: an unstratified draw would often have none
    scores = np.linspace(0, 1, labels.size)
    out = paired_auc_difference(labels, scores, scores[::-1].copy(), draws=100)
    assert np.isfinite(out["mean"]) and out["ci90"][1] < 0


def test_scores_of_another_length_are_refused():
    labels, scores = _scores(3)
    with pytest.raises(ValueError, match="differ in length"):
        paired_auc_difference(labels, scores, scores[:-1], draws=5)


def test_the_script_refuses_two_files_scored_on_different_faces(tmp_path):
    labels, scores = _scores(4, n=20)
    np.savez(tmp_path / "a.npz", val_labels=labels, val_logits=scores)
    np.savez(tmp_path / "b.npz", val_labels=labels[::-1], val_logits=scores)
    with pytest.raises(SystemExit, match="same val faces"):
        load_script("experiments/paired_auc").main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"),
                                                     "--draws", "5"])


def test_two_evaluations_are_paired_on_the_same_faces_only():
    labels = np.array([0, 0, 1, 1])
    installed = {"val_labels": labels, "val_logits": np.array([-2.0, 1.0, -1.0, 2.0])}   # AUC 0.75
    better = {"val_labels": labels, "val_logits": np.array([-2.0, -1.0, 1.0, 2.0])}      # AUC 1.0
    out = paired_auc_of_evaluations(installed, better, draws=20)
    assert out["split"] == "val" and out["difference"] == pytest.approx(0.25) and out["draws"] == 20
    with pytest.raises(ValueError, match="same val faces"):
        paired_auc_of_evaluations(installed, dict(better, val_labels=np.array([1, 0, 1, 0])))

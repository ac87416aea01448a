"""scripts/judge_candidate.py: the figures it reports come from the members' logits and the ensemble
manifest, each class counted on its own; its table shows what changed."""
import numpy as np
import pytest

from script_loader import load_script


def _judge():
    return load_script("judge_candidate")


def _member(val, test):
    # labels: two real faces then two fakes in each set
    labels = np.array([0, 0, 1, 1])
    return {"val_logits": np.array(val, float), "val_labels": labels,
            "test_logits": np.array(test, float), "test_labels": labels}


def test_figures_count_real_faces_on_their_own_and_follow_the_ensemble_weights():
    judge = _judge()
    members = {"a": _member([-2, 1, 2, 3], [-3, -1, 1, 2]), "b": _member([-1, -2, 3, -1], [0, 0, 0, 0])}
    # the ensemble ignores b (weight 0): its figures must be a's
    out = judge.figures_from_logits(members, {"weights": {"a": 1.0, "b": 0.0}, "bias": 0.0})
    assert set(out) == {"a", "b", "ensemble"} and set(out["a"]) == {"val", "test"}
    assert out["a"]["val"]["fpr"] == pytest.approx(0.5)          # logit 1 on a real face
    assert out["a"]["val"]["auc"] == pytest.approx(1.0)
    sig = 1 / (1 + np.exp(-np.array([-2.0, 1.0])))
    assert out["a"]["val"]["real_mean_p"] == pytest.approx(sig.mean())
    assert out["ensemble"]["val"]["real_mean_p"] == pytest.approx(out["a"]["val"]["real_mean_p"])
    assert out["b"]["test"]["auc"] == pytest.approx(0.5) and out["b"]["test"]["fpr"] == 1.0  # P 0.5 everywhere
    # a set missing from one member is left out rather than half-reported
    del members["b"]["test_logits"]
    assert set(judge.figures_from_logits(members, {"weights": {"a": 1.0}, "bias": 0.0})["a"]) == {"val"}


def test_side_by_side_marks_changes_only():
    judge = _judge()
    before = {"a": {"val": {"auc": 0.9, "real_mean_p": 0.2, "fpr": 0.1}}}
    after = {"a": {"val": {"auc": 0.95, "real_mean_p": 0.2, "fpr": 0.1}},
             "new": {"val": {"auc": 0.7, "real_mean_p": float("nan"), "fpr": 0.3}}}
    table = judge.side_by_side(before, after).splitlines()
    assert table[0] == "| model | val auc | val real_mean_p | val fpr |"
    assert table[2] == "| `a` | 0.9000 -> 0.9500 | 0.2000 | 0.1000 |"
    assert table[3] == "| `new` | n/a -> 0.7000 | n/a | n/a -> 0.3000 |"



def test_ensemble_evaluation_is_the_sets_ensemble_on_val(tmp_path):
    """Without a checkpoint the judge pairs the two sets' ensembles on the same val faces."""
    import json

    judge = _judge()
    members = {"a": _member([-2, 1, 2, 3], [0, 0, 0, 0]), "b": _member([1, -2, 3, -1], [0, 0, 0, 0])}
    (tmp_path / "ensemble.json").write_text(json.dumps({"weights": {"a": 0.75, "b": 0.25}, "bias": 0.5}))
    out = judge.ensemble_evaluation(tmp_path, members)
    assert out["val_labels"].tolist() == [0, 0, 1, 1]
    z = np.array([0.75 * a + 0.25 * b + 0.5 for a, b in zip([-2, 1, 2, 3], [1, -2, 3, -1])])
    assert out["val_logits"] == pytest.approx(1 / (1 + np.exp(-z)))   # P(fake): the pairing needs only its order

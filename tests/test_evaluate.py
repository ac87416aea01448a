"""Metrics equal sklearn's; evaluate.py reports every model and the ensemble."""
import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

import evaluate
from convert_models import fit_temperature
from metrics import binary_metrics, equal_error_rate, video_level_auc
from scoring import sigmoid


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    m = binary_metrics(y, s, threshold=0.5)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["ap"] == pytest.approx(average_precision_score(y, s))
    assert m["accuracy"] == pytest.approx(np.mean((s >= 0.5) == y))
    fpr, tpr, _ = roc_curve(y, s)
    assert m["eer"] == pytest.approx(equal_error_rate(y, s))
    assert np.min(np.abs((1 - tpr) - fpr)) < 0.02 and 0.0 < m["eer"] < 0.5


def test_single_class_metrics_are_nan_not_invented():
    m = binary_metrics([1, 1, 1], [0.2, 0.9, 0.4])
    assert math.isnan(m["auc"]) and m["accuracy"] == pytest.approx(1 / 3)


def test_per_class_figures_count_each_class_on_its_own():
    # three real faces (one called fake at 0.5) and two fakes (one missed)
    m = binary_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.6, 0.9, 0.3], threshold=0.5)
    assert m["real_mean_p"] == pytest.approx(0.3) and m["fpr"] == pytest.approx(1 / 3)
    assert m["fake_mean_p"] == pytest.approx(0.6) and m["tpr"] == pytest.approx(0.5)
    # the threshold is inclusive, as for accuracy
    assert binary_metrics([0, 1], [0.5, 0.5], threshold=0.5)["fpr"] == 1.0


def test_per_class_figures_of_an_absent_class_are_nan():
    m = binary_metrics([0, 0], [0.2, 0.7])
    assert m["fpr"] == pytest.approx(0.5) and math.isnan(m["tpr"]) and math.isnan(m["fake_mean_p"])


def test_video_auc_uses_mean_frame_scores():
    vids = ["a", "a", "b", "b", "c", "c"]
    labels = [1, 1, 0, 0, 1, 1]
    scores = [0.9, 0.1, 0.6, 0.6, 0.8, 0.8]   # means: a 0.5, b 0.6, c 0.8
    assert video_level_auc(vids, labels, scores) == pytest.approx(0.5)


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < sigmoid(true_logits)).astype(int)
    assert fit_temperature(true_logits * 3.0, y) == pytest.approx(3.0, rel=0.1)


def test_evaluate_on_a_crop_dataset_reports_all_models(random_models_dir, tmp_path, capsys):
    from conftest import make_face_dataset
    data = make_face_dataset(tmp_path / "faces", per_class=10)
    assert evaluate.main(["--data-dir", str(data), "--split", "train", "--models-dir", str(random_models_dir),
                          "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["models"]) == {"xception", "efficientnet", "swin", "cross_attention", "cnn_transformer", "ensemble"}
    result = evaluate.evaluate(str(data), "train", random_models_dir)
    for key, z in result["_logits"].items():
        assert result["models"][key]["auc"] == pytest.approx(roc_auc_score(result["_labels"], z))
    assert out["test_time_views"] == "voters"
    # --fast scores as predict.py --fast does: one view per face.
    assert evaluate.main(["--data-dir", str(data), "--split", "train", "--models-dir", str(random_models_dir),
                          "--json", "--fast", "--models", "efficientnet"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["test_time_views"] == "none"
    assert fast["models"]["efficientnet"]["auc"] != out["models"]["efficientnet"]["auc"]


def test_the_printed_table_shows_each_class_figures():
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.7, 0.8, 0.4])
    table = evaluate.format_table({"data_dir": "d", "split": "test", "n": 4, "threshold": 0.5,
                                   "models": {"xception": m, "ensemble": m}}).splitlines()
    assert table[1].split() == ["model", "AUC", "AP", "EER", "ACC", "P|real", "FPR", "P|fake", "TPR"]
    row = table[2].split()
    assert row[0] == "xception" and float(row[5]) == pytest.approx(0.4) and float(row[6]) == pytest.approx(0.5)
    assert float(row[7]) == pytest.approx(0.6) and float(row[8]) == pytest.approx(0.5)

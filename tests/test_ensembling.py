"""Ensemble fitting methods and the rule that picks one, on hand-made member logits."""
import numpy as np
import pytest

import ensembling
from scoring import combine, sigmoid


def make_members(n=600, seed=0):
    """Three calibrated-ish members: a good one, a fair one, and one at chance."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    signal = 2 * y - 1
    z = {"good": 2.0 * signal + rng.normal(0, 1.5, n),
         "fair": 0.8 * signal + rng.normal(0, 1.5, n),
         "noise": rng.normal(0, 1.0, n)}
    return z, y


def test_convex_weights_are_a_convex_combination_that_favours_the_better_member():
    z, y = make_members()
    weights, bias = ensembling.fit_convex(z, y, list(z))
    assert bias == 0.0
    assert all(w >= 0 for w in weights.values()) and sum(weights.values()) == pytest.approx(1.0)
    assert weights["good"] > weights["fair"] > weights["noise"]


def test_shrinkage_pulls_convex_weights_towards_equal():
    z, y = make_members()
    loose, _ = ensembling.fit_convex(z, y, list(z), shrink=0.0)
    tight, _ = ensembling.fit_convex(z, y, list(z), shrink=100.0)
    spread = lambda w: max(w.values()) - min(w.values())  # noqa: E731
    assert spread(tight) < spread(loose)
    assert all(abs(v - 1 / 3) < 0.05 for v in tight.values())


def test_the_convex_ensemble_never_leaves_the_range_of_its_members():
    z, y = make_members()
    weights, _ = ensembling.fit_convex(z, y, list(z))
    body = {"weights": weights, "bias": 0.0}
    p = combine(body, z)
    lo = sigmoid(np.min(np.stack(list(z.values())), axis=0))
    hi = sigmoid(np.max(np.stack(list(z.values())), axis=0))
    assert np.all(p >= lo - 1e-12) and np.all(p <= hi + 1e-12)


def test_members_below_the_quality_floor_become_advisory():
    z, y = make_members()
    options = ensembling.candidates(z, y)
    assert set(options) == {f"{m}{rule}" for m in ("logistic", "convex", "mean") for rule in ("", "+floor", "+select")}
    assert options["mean+floor"]["advisory"] == ["noise"]
    assert options["mean+floor"]["weights"]["noise"] == 0.0
    assert options["mean"]["advisory"] == [] and options["mean"]["weights"]["noise"] == pytest.approx(1 / 3)


def test_forward_selection_admits_a_member_only_if_it_raises_the_mean_s_val_auc():
    rng = np.random.default_rng(3)
    n = 4000
    y = rng.integers(0, 2, n).astype(float)
    signal = 2 * y - 1
    z = {"strong_a": 2.5 * signal + rng.normal(0, 3.0, n),
         "strong_b": 2.5 * signal + rng.normal(0, 3.0, n),
         # above a 0.70 floor, below the others, and loud: its logits would dominate the mean
         "weak": 6.0 * (0.9 * signal + rng.normal(0, 1.5, n))}
    assert ensembling.binary_metrics(y, z["weak"])["auc"] > ensembling.QUALITY_FLOOR_AUC
    assert ensembling.voters(z, y, ensembling.QUALITY_FLOOR_AUC) == ["strong_a", "strong_b", "weak"]
    assert ensembling.selected_voters(z, y) == ["strong_a", "strong_b"]
    options = ensembling.candidates(z, y)
    assert options["mean+select"]["advisory"] == ["weak"] and options["mean+floor"]["advisory"] == []
    # A member at chance with near-constant logits hardly changes the mean's ranking: the floor keeps
    # it out whatever rounding-sized gain it brings.
    z["constant"] = rng.normal(0, 1e-3, n)
    assert "constant" not in ensembling.selected_voters(z, y, min_gain=0.0)
    # A member that adds independent evidence of similar quality is admitted.
    z["third"] = 2.5 * signal + rng.normal(0, 3.0, n)
    assert ensembling.selected_voters(z, y) == ["strong_a", "strong_b", "third"]


def test_the_floor_never_removes_every_voter():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200).astype(float)
    z = {"a": rng.normal(size=200), "b": rng.normal(size=200)}
    assert len(ensembling.voters(z, y, 0.99)) == 1


def test_choose_prefers_the_best_test_auc_among_methods_not_below_their_best_member():
    best = {"test": ("m1", 0.90), "cross_dataset": ("m2", 0.60)}
    results = {
        "logistic": {"test": {"auc": 0.95}, "cross_dataset": {"auc": 0.45}},   # best on test, fails cross
        "convex": {"test": {"auc": 0.93}, "cross_dataset": {"auc": 0.61}},
        "mean": {"test": {"auc": 0.92}, "cross_dataset": {"auc": 0.65}},
    }
    pick, why = ensembling.choose(results, best)
    assert pick == "convex" and "not below" in why


def test_choose_falls_back_to_the_simplest_method_that_holds_on_test():
    best = {"test": ("m1", 0.90), "cross_dataset": ("m2", 0.70)}
    results = {"logistic": {"test": {"auc": 0.95}, "cross_dataset": {"auc": 0.50}},
               "convex": {"test": {"auc": 0.93}, "cross_dataset": {"auc": 0.66}},
               "mean+floor": {"test": {"auc": 0.89}, "cross_dataset": {"auc": 0.60}},   # below on test
               "mean": {"test": {"auc": 0.91}, "cross_dataset": {"auc": 0.55}}}
    pick, why = ensembling.choose(results, best)
    assert pick == "mean" and "simplest" in why


def test_evaluate_and_best_members_measure_what_they_say():
    z, y = make_members()
    sets = {"test": (z, y)}
    assert ensembling.best_members(sets)["test"][0] == "good"
    body = {"weights": {"good": 1.0, "fair": 0.0, "noise": 0.0}, "bias": 0.0}
    from metrics import binary_metrics
    assert ensembling.evaluate(body, sets)["test"]["auc"] == pytest.approx(binary_metrics(y, z["good"])["auc"])


def test_logistic_weights_are_never_negative_and_fit_better_than_chance():
    z, y = make_members()
    z["inverted"] = -z["fair"]                      # would get a negative weight without the bound
    weights, bias = ensembling.fit_logistic(z, y, list(z))
    assert all(w >= 0 for w in weights.values()) and weights["inverted"] == pytest.approx(0.0, abs=1e-6)
    assert weights["good"] > weights["noise"]


def test_members_whose_vote_or_views_changed_are_found_for_recalibration(tmp_path):
    """The test-time views follow the vote, and the temperature the views: a member calibrated on other
    views than the installed ensemble (and the code) gives it must be recalibrated (convert_models.main
    does it)."""
    from convert_models import views_out_of_date
    from scoring import TEST_TIME_VIEWS, view_words
    from fileio import atomic_write_json
    from model_store import read_manifest, write_random_models

    models = write_random_models(tmp_path, keys=["efficientnet", "xception"], size=64, ensemble=False)
    for key, tta in (("efficientnet", view_words("efficientnet")), ("xception", "none")):
        manifest = read_manifest(models / f"{key}.json")
        atomic_write_json(models / f"{key}.json", {**manifest, "test_time_augmentation": tta})
    assert views_out_of_date(models) == ["xception"]        # no ensemble.json: every member votes
    atomic_write_json(models / "ensemble.json", {"key": "ensemble", "bias": 0.0, "threshold": 0.5,
                                                 "weights": {"efficientnet": 1.0, "xception": 0.0}})
    assert views_out_of_date(models) == []
    atomic_write_json(models / "ensemble.json", {"key": "ensemble", "bias": 0.0, "threshold": 0.5,
                                                 "weights": {"efficientnet": 0.0, "xception": 1.0}})
    assert views_out_of_date(models) == ["xception", "efficientnet"]     # registry order
    for key, tta in (("xception", view_words("xception")), ("efficientnet", "none")):
        atomic_write_json(models / f"{key}.json", {**read_manifest(models / f"{key}.json"), "test_time_augmentation": tta})
    assert views_out_of_date(models) == []
    # A voter calibrated on an earlier release's views (the plain flip) is out of date too.
    atomic_write_json(models / "xception.json", {**read_manifest(models / "xception.json"),
                                                 "test_time_augmentation": "horizontal flip (mean of the two logits)"})
    assert views_out_of_date(models) == ["xception"]
    # A member whose registry entry gives it other views than it was calibrated on (session 38:
    # efficientnet went from four views to eight) is out of date once it votes.
    assert view_words("efficientnet") != TEST_TIME_VIEWS == view_words("xception")
    atomic_write_json(models / "xception.json", {**read_manifest(models / "xception.json"),
                                                 "test_time_augmentation": TEST_TIME_VIEWS})
    atomic_write_json(models / "efficientnet.json", {**read_manifest(models / "efficientnet.json"),
                                                     "test_time_augmentation": TEST_TIME_VIEWS})
    atomic_write_json(models / "ensemble.json", {"key": "ensemble", "bias": 0.0, "threshold": 0.5,
                                                 "weights": {"efficientnet": 0.5, "xception": 0.5}})
    assert views_out_of_date(models) == ["efficientnet"]
    # The moves a manifest records (written since session 39) are what count, not its words.
    atomic_write_json(models / "efficientnet.json", {**read_manifest(models / "efficientnet.json"),
                                                     "test_time_shifts": [0, 1, 2, 3]})
    assert views_out_of_date(models) == []
    atomic_write_json(models / "xception.json", {**read_manifest(models / "xception.json"),
                                                 "test_time_shifts": [0, 1, 2, 3]})
    assert views_out_of_date(models) == ["xception"]


def test_remeasure_recomputes_metrics_from_the_cached_logits_and_keeps_the_temperature(tmp_path):
    """`convert_models.py --remeasure`: new figures for an unchanged model come from the logits its
    conversion cached, and nothing it was fitted with moves."""
    from convert_models import remeasure, write_eval_cache
    from metrics import binary_metrics
    from model_store import read_manifest, write_random_models
    from scoring import sigmoid

    models = write_random_models(tmp_path / "m", keys=["efficientnet"], size=64, ensemble=False)
    before = read_manifest(models / "efficientnet.json")
    z, y = make_members()
    arrays = {}
    for name in ("val", "test", "cross_dataset"):
        arrays[f"{name}_logits"], arrays[f"{name}_labels"] = z["good"], y
    write_eval_cache(tmp_path / "cache" / "efficientnet" / "eval_logits.npz", before, arrays)
    after = remeasure(models, "efficientnet", "dfdc-faces", "ffhq", tmp_path / "cache")
    assert read_manifest(models / "efficientnet.json") == after
    assert after["temperature"] == before["temperature"] and after["sha256"] == before["sha256"]
    expected = binary_metrics(y, sigmoid(z["good"]))
    assert after["metrics"]["val"]["fpr"] == pytest.approx(expected["fpr"])
    assert after["metrics"]["cross_dataset"]["real_mean_p"] == pytest.approx(expected["real_mean_p"])
    assert after["metrics"]["cross_dataset"]["dataset"] == "ffhq" and after["metrics"]["test"]["split"] == "test"


def test_the_gap_to_the_best_member_comes_with_a_paired_interval():
    z, y = make_members()
    sets = {"test": (z, y)}
    only_good = {"weights": {"good": 1.0, "fair": 0.0, "noise": 0.0}, "bias": 0.0}
    same = ensembling.versus_best_members(only_good, sets, draws=200)["test"]
    assert same["best_member"] == "good" and same["difference"] == 0 and same["ci90"] == [0, 0]
    diluted = {"weights": {"good": 0.2, "fair": 0.0, "noise": 0.8}, "bias": 0.0}
    worse = ensembling.versus_best_members(diluted, sets, draws=200)["test"]
    assert worse["difference"] < 0 and worse["ci90"][1] < 0 and worse["share_not_lower"] < 0.05
    among = ensembling.versus_best_members(diluted, sets, among=["fair", "noise"], draws=200)["test"]
    assert among["best_member"] == "fair"            # the best of the members named, not of all
    one_class = {"test": ({k: v[y == 1] for k, v in z.items()}, y[y == 1])}
    assert ensembling.versus_best_members(only_good, one_class) == {}

"""Stability measurement (stability.py, evaluate.py --stability) and the test-time views."""
import numpy as np
import pytest
import torch

import stability
from registry import ENSEMBLE_KEY
from scoring import ScoringEngine, prepare_batch, tta_views, views_of


def test_recut_without_change_is_the_crop_and_views_keep_the_shape(astronaut):
    crop = np.ascontiguousarray(astronaut[20:244, 150:374])
    same = stability.recut(crop, 0.0, 0.0, 1.0)
    assert np.abs(same.astype(int) - crop.astype(int)).mean() < 1.0
    views = stability.crop_views(crop, np.random.default_rng(0))
    assert set(views) == {"shift", "larger", "smaller", "filter", "jpeg75"}
    assert views["filter"] is crop and set(stability.VIEW_INTERPOLATION) == {"filter"}
    for name in ("shift", "larger", "smaller", "jpeg75"):
        assert views[name].shape == crop.shape and views[name].dtype == np.uint8
        assert not np.array_equal(views[name], crop), name
    # A larger box shows more: the centre of the crop shrinks towards the middle of the view.
    assert np.abs(views["larger"].astype(int) - crop.astype(int)).mean() > 1.0


def test_the_jpeg_view_recompresses_a_jpeg_75_crop_off_its_grid(astronaut):
    """The dfdc-faces crops are JPEG 75: re-saving one on its own grid would change (almost) nothing."""
    saved = stability.jpeg(np.ascontiguousarray(astronaut[20:244, 150:374]))   # a JPEG-75 crop, decoded
    on_grid = np.abs(stability.jpeg(saved).astype(int) - saved).mean()
    view = stability.crop_views(saved, np.random.default_rng(0))["jpeg75"]
    assert view.shape == saved.shape
    off_grid = np.abs(view.astype(int) - saved).mean()
    assert on_grid < 0.2 and off_grid > 0.5 and off_grid > 5 * on_grid, (on_grid, off_grid)


def test_canvas_versions_put_the_crop_on_grey_at_three_scales():
    crop = np.full((100, 100, 3), 200, np.uint8)
    versions = stability.canvas_versions(crop)
    assert [v.shape[0] for v in versions] == [150, 145, 155, 150]
    assert versions[0][0, 0].tolist() == [128, 128, 128] and versions[0][75, 75].tolist() == [200, 200, 200]


def test_test_time_views_score_a_face_and_its_mirror_alike(random_models_dir, astronaut):
    crop = np.ascontiguousarray(astronaut[20:244, 150:374])
    mirror = np.ascontiguousarray(crop[:, ::-1])
    keys = ["efficientnet", "cnn_transformer"]   # a CNN and a transformer; two keep the test quick
    with_views = ScoringEngine(random_models_dir, keys=keys, runtime="torch", tta=True)
    result = with_views.score_crops([crop, mirror])
    for k, p in result.model_probabilities.items():
        assert p[0] == pytest.approx(p[1], abs=1e-5), k
    without = ScoringEngine(random_models_dir, keys=keys, runtime="torch", tta=False)
    plain = without.score_crops([crop, mirror])
    assert any(abs(p[0] - p[1]) > 1e-4 for p in plain.model_probabilities.values())
    # The engine's logit is the mean of the model's plain logits over its views, before the temperature.
    for k in result.model_logits:
        loaded = with_views.models[k]
        x = prepare_batch([crop], loaded.input_size, loaded.manifest["mean"], loaded.manifest["std"])
        with torch.no_grad():
            each = [float(loaded.model(v.contiguous()).reshape(-1)[0]) for v in views_of(k)(x)]
        assert result.model_logits[k][0] * loaded.temperature == pytest.approx(np.mean(each), abs=1e-4)
    # The views are the engine's to swap per member (experiments do): one view gives the plain scores.
    with_views.views = dict.fromkeys(keys, lambda batch: [batch])
    one = with_views.score_crops([crop, mirror])
    for k in one.model_logits:
        assert one.model_logits[k] == pytest.approx(plain.model_logits[k], abs=1e-6)


def test_test_time_views_are_the_crop_and_its_mirror_each_also_a_pixel_away():
    """The views cover both phases of a stride-2 grid in x and y, and a mirrored batch gets the same
    views (so a face and its mirror score the same)."""
    batch = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).reshape(2, 3, 6, 8)
    plain, mirrored, moved, moved_mirror = tta_views(batch)
    assert torch.equal(plain, batch) and torch.equal(mirrored, batch.flip(3))
    assert torch.equal(moved[:, :, 1:, 1:], batch[:, :, :-1, :-1])            # one pixel right and down
    assert torch.equal(moved[:, :, 0, 1:], batch[:, :, 0, :-1])                # the edge repeated into the gap
    assert torch.equal(moved_mirror[:, :, 1:, 1:], batch.flip(3)[:, :, :-1, :-1])
    views_of_mirror = tta_views(batch.flip(3))
    as_set = lambda views: sorted(v.flatten().tolist() for v in views)  # noqa: E731
    assert as_set(views_of_mirror) == as_set([plain, mirrored, moved, moved_mirror])


def test_views_moved_two_and_three_pixels_on_stay_closed_under_mirroring_and_follow_the_registry():
    """The eight views measured in session 37 (the four, and the crop and its mirror moved two and
    three pixels right and down: the stride-4 grid's other phase) keep a mirrored face's score the
    same; each model's views are its registry entry's, and every entry's set has the words its
    manifest records."""
    from registry import MODEL_KEYS, get_spec
    from scoring import VIEW_WORDS, diagonal_views, view_words

    batch = torch.arange(2 * 3 * 8 * 10, dtype=torch.float32).reshape(2, 3, 8, 10)
    as_set = lambda views: sorted(v.flatten().tolist() for v in views)  # noqa: E731
    eight = diagonal_views(batch, (0, 1, 2, 3))
    assert len(eight) == 8 and as_set(eight[:4]) == as_set(tta_views(batch))
    assert torch.equal(eight[6][:, :, 3:, 3:], batch[:, :, :-3, :-3])
    assert torch.equal(eight[7][:, :, 2:, 2:], eight[5][:, :, 1:-1, 1:-1])   # the mirror, one pixel further
    assert as_set(diagonal_views(batch.flip(3), (0, 1, 2, 3))) == as_set(eight)
    for key in MODEL_KEYS:
        shifts = get_spec(key).test_time_shifts
        assert as_set(views_of(key)(batch)) == as_set(diagonal_views(batch, shifts))
        assert view_words(key) == VIEW_WORDS[shifts]
    assert len(set(VIEW_WORDS.values())) == len(VIEW_WORDS)



def test_a_manifest_records_the_views_its_temperature_was_fitted_on(caplog):
    """`test_time_shifts` wins; older manifests are read from their words; "none", unknown words and
    moves out of bounds give None (the engine then falls back to the registry's views)."""
    from scoring import MAX_VIEW_SHIFT, TEST_TIME_VIEWS, VIEW_WORDS, recorded_shifts

    eight_words = VIEW_WORDS[(0, 1, 2, 3)]
    assert recorded_shifts({"test_time_shifts": [0, 1], "test_time_augmentation": eight_words}) == (0, 1)
    assert recorded_shifts({"test_time_augmentation": eight_words}) == (0, 1, 2, 3)
    assert recorded_shifts({"test_time_augmentation": TEST_TIME_VIEWS}) == (0, 1)
    assert recorded_shifts({"test_time_shifts": None, "test_time_augmentation": "none"}) is None
    assert recorded_shifts({"test_time_augmentation": "horizontal flip (mean of the two logits)"}) is None
    assert recorded_shifts({}) is None
    for bad in ([0, MAX_VIEW_SHIFT + 1], [1, 2], [0, 0], [], [0, 1.0], [0, True], "0,1", [0, -1]):
        with caplog.at_level("WARNING", logger="scoring"):
            caplog.clear()
            assert recorded_shifts({"key": "x", "test_time_shifts": bad, "test_time_augmentation": "none"}) is None
            assert "ignoring test_time_shifts" in caplog.text, bad
        assert recorded_shifts({"test_time_shifts": bad, "test_time_augmentation": TEST_TIME_VIEWS}) == (0, 1)


def test_an_installed_member_is_scored_with_the_views_of_its_manifest_not_the_registry_s(tmp_path, astronaut):
    """A registry change of a member's views must not silently re-score the installed model against a
    temperature fitted on others: the app (and the judge's installed side) use the manifest's views,
    a recalibration (views_from="registry") the registry's."""
    from fileio import atomic_write_json
    from model_store import read_manifest, write_random_models
    from registry import get_spec
    from scoring import diagonal_views, view_count

    assert get_spec("efficientnet").test_time_shifts == (0, 1, 2, 3)
    models = write_random_models(tmp_path, keys=["efficientnet"], size=64)
    path = models / "efficientnet.json"
    atomic_write_json(path, {**read_manifest(path), "test_time_shifts": [0, 1]})   # calibrated on four
    installed = ScoringEngine(models, runtime="torch")
    registry = ScoringEngine(models, runtime="torch", views_from="registry")
    assert view_count(installed.views_for("efficientnet")) == 4
    assert view_count(registry.views_for("efficientnet")) == 8
    crop = np.ascontiguousarray(astronaut[20:244, 150:374])
    loaded = installed.models["efficientnet"]
    batch = prepare_batch([crop], loaded.input_size, loaded.manifest["mean"], loaded.manifest["std"])
    with torch.inference_mode():
        four = float(torch.stack([loaded.model(v).reshape(()) for v in diagonal_views(batch, (0, 1))]).mean())
        eight = float(torch.stack([loaded.model(v).reshape(()) for v in diagonal_views(batch, (0, 1, 2, 3))]).mean())
    assert abs(four - eight) > 1e-4                     # the two sets of views do score differently
    assert installed.model_logits("efficientnet", [crop])[0] == pytest.approx(four / loaded.temperature, abs=1e-4)
    assert registry.model_logits("efficientnet", [crop])[0] == pytest.approx(eight / loaded.temperature, abs=1e-4)
    # A manifest that records no views (a member calibrated as advisory) that votes now gets the registry's.
    atomic_write_json(path, {**read_manifest(path), "test_time_shifts": None, "test_time_augmentation": "none"})
    assert view_count(ScoringEngine(models, runtime="torch").views_for("efficientnet")) == 8
    with pytest.raises(ValueError, match="views_from"):
        ScoringEngine(models, views_from="newest")


def test_stability_reports_every_model_and_the_ensemble(engine, astronaut):
    crops = [np.ascontiguousarray(astronaut[y:y + 200, x:x + 200]) for y, x in ((20, 150), (30, 160), (10, 140))]
    out = stability.stability(engine, crops, seed=0, batch=2)
    assert set(out) == {*engine.loaded_keys, ENSEMBLE_KEY}
    for k, m in out.items():
        assert m["n"] == 3 * 5 and 0.0 <= m["mean"] <= m["p95"] <= m["max"] <= 1.0
        assert set(m["by_view"]) == {"shift", "larger", "smaller", "filter", "jpeg75"}


def test_test_time_views_are_spent_on_voting_members_only(tmp_path, astronaut):
    """Default policy: the ensemble's voters average the test-time views; advisory members (weight 0)
    are scored once, since their scores cannot change a verdict."""
    from fileio import atomic_write_json
    from model_store import write_random_models

    models = write_random_models(tmp_path, keys=["cross_attention", "efficientnet"], size=64, ensemble=False)
    atomic_write_json(models / "ensemble.json", {"key": "ensemble", "bias": 0.0, "threshold": 0.5,
                                                 "weights": {"cross_attention": 1.0, "efficientnet": 0.0}})
    engine = ScoringEngine(models, runtime="torch")
    assert engine.tta == "voters" and engine.advisory_keys == ["efficientnet"]  # (random efficientnet: not symmetric)
    assert engine.uses_tta("cross_attention") and not engine.uses_tta("efficientnet")
    crop = np.ascontiguousarray(astronaut[20:244, 150:374])
    p = engine.score_crops([crop, np.ascontiguousarray(crop[:, ::-1])]).model_probabilities
    assert p["cross_attention"][0] == pytest.approx(p["cross_attention"][1], abs=1e-5)
    assert abs(p["efficientnet"][0] - p["efficientnet"][1]) > 1e-4
    assert ScoringEngine(models, runtime="torch", tta="all").uses_tta("efficientnet")
    assert not ScoringEngine(models, runtime="torch", tta=False).uses_tta("cross_attention")
    with pytest.raises(ValueError):
        ScoringEngine(models, runtime="torch", tta="sometimes")


def test_p95_interval_brackets_the_figure_and_narrows_with_more_faces():
    rng = np.random.default_rng(1)
    few, many = rng.exponential(0.03, 40), rng.exponential(0.03, 4000)
    for sample in (few, many):
        s = stability.dp_summary(sample)
        lo, hi = s["p95_ci90"]
        assert lo <= s["p95"] <= hi and sample.min() <= lo and hi <= sample.max() + 1e-4   # figures are rounded to 4 places
    width = lambda x: np.subtract(*stability.p95_interval(x)[::-1])
    assert width(many) < width(few) / 3
    # The same faces every time give the same interval (a fixed seed), and a constant has no spread.
    assert stability.p95_interval(few) == stability.p95_interval(few)
    assert stability.p95_interval(np.full(40, 0.07)) == (0.07, 0.07)


def test_p95_interval_resamples_faces_not_views():
    """A face's views move together; counting them as independent draws would understate the
    uncertainty: with 5 identical views per face the interval is that of the 40 faces, not of 200."""
    faces = np.random.default_rng(2).exponential(0.03, 40)
    views = np.repeat(faces[:, None], 5, axis=1)
    assert stability.p95_interval(views) == stability.p95_interval(faces)
    assert stability.dp_summary(views)["n"] == 200
    as_independent = np.subtract(*stability.p95_interval(views.ravel())[::-1])
    assert as_independent < np.subtract(*stability.p95_interval(views)[::-1])


def test_the_filter_view_resamples_straight_to_each_models_own_input(random_models_dir, astronaut):
    """Models of different input sizes each see the crop resampled bilinearly straight to their own
    size, not through another model's size."""
    import cv2

    from scoring import prepare_batch

    crop = np.ascontiguousarray(astronaut[20:244, 150:374])
    mean = std = (0.5, 0.5, 0.5)
    straight = prepare_batch([cv2.resize(crop, (64, 64), interpolation=cv2.INTER_LINEAR)], 64, mean, std)
    assert np.array_equal(prepare_batch([crop], 64, mean, std, cv2.INTER_LINEAR).numpy(), straight.numpy())
    assert not np.array_equal(prepare_batch([crop], 64, mean, std).numpy(), straight.numpy())  # area by default

    keys = ["efficientnet", "cnn_transformer"]
    engine = ScoringEngine(random_models_dir, keys=keys, runtime="torch")
    engine.models["efficientnet"].manifest["input_size"] = 48   # two sizes in one ensemble
    crops = [crop, np.ascontiguousarray(astronaut[30:230, 160:360])]
    diffs = stability.view_diffs(engine, crops, keys, lambda c: {"filter": c})
    base, moved = engine.score_crops(crops, keys), engine.score_crops(crops, keys, cv2.INTER_LINEAR)
    for k in keys:
        expected = moved.model_probabilities[k] - base.model_probabilities[k]
        assert np.allclose(diffs[k]["filter"], expected) and np.abs(expected).max() > 0, k
    for k, size in (("efficientnet", 48), ("cnn_transformer", 64)):
        own = engine.score_crops([cv2.resize(c, (size, size), interpolation=cv2.INTER_LINEAR) for c in crops], [k])
        assert np.allclose(moved.model_probabilities[k], own.model_probabilities[k], atol=1e-6), k



def test_fast_mode_scores_each_crop_once_and_the_views_batch_the_same_whatever_the_count(random_models_dir, astronaut):
    """`fast=True` scores as an engine without views does, whatever the policy; with the views, crops go
    through the model a few at a time (scoring.MAX_IMAGES_PER_CALL), and a face's score does not depend
    on how many faces share its call."""
    from scoring import MAX_IMAGES_PER_CALL, view_count

    keys = ["efficientnet"]   # a random cnn_transformer answers nearly the same for any crop
    per_crop = view_count(views_of("efficientnet"))                  # eight since session 38
    assert per_crop == 8
    per_call = MAX_IMAGES_PER_CALL // per_crop
    every = [np.ascontiguousarray(astronaut[10 + i:210 + i, 140 + 2 * i:340 + 2 * i])
             for i in range(MAX_IMAGES_PER_CALL // 4 + 3)]
    crops = every[:per_call + 3]
    with_views = ScoringEngine(random_models_dir, keys=keys, runtime="torch")
    without = ScoringEngine(random_models_dir, keys=keys, runtime="torch", tta="none")
    fast = with_views.score_crops(crops, fast=True).model_logits["efficientnet"]
    assert fast == pytest.approx(without.score_crops(crops).model_logits["efficientnet"], abs=1e-6)
    together = with_views.score_crops(crops).model_logits["efficientnet"]
    assert np.abs(together - fast).max() > 1e-4                     # the views do change the scores
    one_by_one = [with_views.score_crops([c]).model_logits["efficientnet"][0] for c in crops[-4:]]
    assert together[-4:] == pytest.approx(one_by_one, abs=1e-4)      # the last ones shared a call with fewer
    calls = []
    runner = with_views.runners["efficientnet"]
    original = runner.logits
    runner.logits = lambda batch: calls.append(len(batch)) or original(batch)
    try:
        with_views.score_crops(crops)
    finally:
        runner.logits = original
    assert calls == [MAX_IMAGES_PER_CALL, 3 * per_crop]
    # With four views (an override, as experiments set it) a call carries as many images: 16 crops of four.
    with_views.views = {"efficientnet": tta_views}
    calls = []
    runner.logits = lambda batch: calls.append(len(batch)) or original(batch)
    try:
        with_views.score_crops(every)
    finally:
        runner.logits = original
    assert calls == [MAX_IMAGES_PER_CALL, 3 * 4]

"""Scoring engine: batching, calibration, ensemble."""
import numpy as np
import pytest

from scoring import ScoringEngine, prepare_batch, sigmoid


def _crops(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(n)]


def test_batched_scores_equal_one_at_a_time(engine):
    crops = _crops(40)  # more than one batch of 32
    batched = engine.score_crops(crops)
    singles = [engine.score_crops([c]) for c in crops[:3]]
    for i, single in enumerate(singles):
        for key in engine.loaded_keys:
            assert batched.model_probabilities[key][i] == pytest.approx(single.model_probabilities[key][0], abs=1e-5)
    assert len(batched) == 40
    assert np.all((batched.ensemble_probability >= 0) & (batched.ensemble_probability <= 1))


def test_temperature_divides_logits(engine):
    key = engine.loaded_keys[0]
    crops = _crops(4, seed=1)
    before = engine.model_logits(key, crops)
    engine.models[key].manifest["temperature"] = 2.0
    try:
        after = engine.model_logits(key, crops)
    finally:
        engine.models[key].manifest["temperature"] = 1.0
    np.testing.assert_allclose(after, before / 2.0, rtol=1e-6)


def test_ensemble_is_the_weighted_logit_and_renormalises_subsets(engine):
    logits = {"xception": np.array([2.0]), "swin": np.array([-1.0])}
    manifest = engine.ensemble_manifest
    engine.ensemble_manifest = {"weights": {"xception": 1.0, "swin": 3.0, "efficientnet": 0.0,
                                            "cross_attention": 0.0, "cnn_transformer": 0.0}, "bias": 0.5}
    try:
        assert engine.combine(logits)[0] == pytest.approx(sigmoid(0.5 + 2.0 - 3.0))
        # Only xception on: its weight is scaled to the full weight sum (4), keeping the logit scale.
        assert engine.combine(logits, ["xception"])[0] == pytest.approx(sigmoid(0.5 + 4 * 2.0))
    finally:
        engine.ensemble_manifest = manifest


def test_prepare_batch_normalises_like_the_registry():
    crop = np.full((224, 224, 3), 255, np.uint8)
    x = prepare_batch([crop], 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (1, 3, 64, 64)
    assert float(x.min()) == pytest.approx(1.0) and float(x.max()) == pytest.approx(1.0)


def test_no_models_gives_a_clear_error(tmp_path):
    from scoring import NoModelsError
    engine = ScoringEngine(tmp_path)
    with pytest.raises(NoModelsError, match="no detector models are installed"):
        engine.score_crops(_crops(1))


def test_load_engine_freezes_what_lives_on(random_models_dir):
    """pipeline.load_engine: the engine, and everything alive after start-up moved out of the cyclic
    collector's reach (gc.freeze: faster collections and exit)."""
    import gc

    import pipeline

    gc.unfreeze()
    engine = pipeline.load_engine(random_models_dir)
    assert engine.loaded_keys and gc.get_freeze_count() > 10_000

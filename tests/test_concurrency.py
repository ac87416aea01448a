"""One ScoringEngine shared by several threads (as the app's sessions share it) gives each caller
exactly what it would get alone: the same faces and the same probabilities.

Holds whichever runner the engine picked (ONNX Runtime through fast_runtime.py, or eager torch).
"""
from __future__ import annotations

import io
import random
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline import analyze_image, build_report
from scoring import sigmoid

WORKERS = 4
PROB_TOL = 1e-6


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(astronaut) -> dict[str, bytes]:
    """Different pictures (small, to keep the test quick): one face, mirrored, two faces side by side,
    a smaller one, and none."""
    one = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    mirrored = np.ascontiguousarray(one[:, ::-1])
    pair = np.concatenate([one, mirrored], axis=1)
    small = cv2.resize(astronaut, (192, 192), interpolation=cv2.INTER_AREA)
    gradient = np.tile(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], (200, 1, 3))
    return {"one_face.png": _png(one), "mirrored.png": _png(mirrored), "two_faces.png": _png(pair),
            "small.png": _png(small), "no_face.png": _png(gradient)}


def _summary(analysis, engine) -> dict:
    report = build_report(analysis, engine)
    return {
        "boxes": [tuple(round(float(v), 3) for v in r.face.box) for r in analysis.faces],
        "ensemble": [f["fake_probability"] for f in report["faces"]],
        "raw_ensemble": engine.combine({k: np.array([r.logits[k] for r in analysis.faces]) for k in analysis.models})
        if analysis.faces else np.zeros(0),
        "logits": {k: np.array([r.logits[k] for r in analysis.faces]) for k in analysis.models},
        "verdict": report["verdict"],
    }


def _assert_same(a: dict, b: dict, name: str) -> None:
    assert a["boxes"] == b["boxes"], name
    assert a["verdict"] == b["verdict"], name
    assert set(a["logits"]) == set(b["logits"]), name
    np.testing.assert_allclose(a["raw_ensemble"], b["raw_ensemble"], rtol=0, atol=PROB_TOL, err_msg=name)
    for key in a["logits"]:
        pa, pb = sigmoid(a["logits"][key]), sigmoid(b["logits"][key])
        np.testing.assert_allclose(pa, pb, rtol=0, atol=PROB_TOL, err_msg=f"{name} {key}")


def test_threads_sharing_one_engine_get_the_single_threaded_results(engine, images):
    alone = {name: _summary(analyze_image(data, engine, name=name), engine) for name, data in images.items()}
    assert len(alone["one_face.png"]["boxes"]) == 1 and len(alone["two_faces.png"]["boxes"]) == 2
    assert alone["no_face.png"]["boxes"] == []

    jobs = list(images) + ["two_faces.png", "one_face.png", "mirrored.png"]   # some twice, interleaved
    random.Random(0).shuffle(jobs)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = [(name, pool.submit(analyze_image, images[name], engine, name=name)) for name in jobs]
        together = [(name, future.result(timeout=900)) for name, future in futures]
    for name, analysis in together:
        assert analysis.input == name
        _assert_same(alone[name], _summary(analysis, engine), name)


def test_threads_scoring_crops_directly(engine, astronaut):
    """score_crops from several threads with different batch contents equals the serial result."""
    rng = np.random.default_rng(0)
    batches = []
    for n in (1, 2, 5):
        crops = []
        for _ in range(n):
            y, x = rng.integers(0, 288, size=2)
            crops.append(np.ascontiguousarray(astronaut[y:y + 224, x:x + 224]))
        batches.append(crops)
    serial = [engine.score_crops(b) for b in batches]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        parallel = list(pool.map(engine.score_crops, batches * 2))
    for i, result in enumerate(parallel):
        expected = serial[i % len(batches)]
        assert result.models_used == expected.models_used
        np.testing.assert_allclose(result.ensemble_probability, expected.ensemble_probability, rtol=0, atol=PROB_TOL)
        for key in expected.model_probabilities:
            np.testing.assert_allclose(result.model_probabilities[key], expected.model_probabilities[key],
                                       rtol=0, atol=PROB_TOL)


# Explanations (Grad-CAM and feature-map hooks on the shared torch module) while other threads score:
# with either runtime, each runner's lock guards the torch module, so results equal single-threaded ones.
EXPLAINED_KEYS = ("efficientnet", "cnn_transformer")   # a CNN with feature maps, and a transformer


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_explanations_in_threads_while_scoring(random_models_dir, astronaut, runtime):
    import feature_visualization as fv
    from scoring import Runner, ScoringEngine

    if runtime == "onnx":
        pytest.importorskip("onnxruntime")
    shared = ScoringEngine(random_models_dir, keys=EXPLAINED_KEYS, runtime=runtime)
    for key in EXPLAINED_KEYS:
        runner = shared.runners[key]
        assert isinstance(runner, Runner) and runner.model is shared.models[key].model
        assert runner.lock is not None
        assert (type(runner).__name__ == "OnnxRunner") == (runtime == "onnx")
    crops = [np.ascontiguousarray(cv2.resize(astronaut[y:y + 200, x:x + 200], (224, 224),
                                             interpolation=cv2.INTER_AREA))
             for y, x in ((20, 160), (250, 30), (100, 100))]

    def explain(job):
        key, i, direction = job
        heat = fv.engine_grad_cam(shared, key, crops[i], explain=direction)
        maps = fv.engine_feature_maps(shared, key, crops[i])
        return heat, [lf.mean_map for lf in maps]

    jobs = [(key, i, d) for key in EXPLAINED_KEYS for i in range(len(crops)) for d in ("fake", "real")]
    alone = {job: explain(job) for job in jobs}
    scores_alone = shared.score_crops(crops)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        scoring = [pool.submit(shared.score_crops, crops) for _ in range(3)]
        together = [(job, pool.submit(explain, job)) for job in jobs * 2]
        scoring += [pool.submit(shared.score_crops, crops) for _ in range(3)]
        results = [(job, future.result(timeout=900)) for job, future in together]
        scores = [future.result(timeout=900) for future in scoring]
    for job, (heat, maps) in results:
        np.testing.assert_allclose(heat, alone[job][0], rtol=0, atol=1e-5, err_msg=str(job))
        assert len(maps) == len(alone[job][1])
        for got, want in zip(maps, alone[job][1]):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=str(job))
    for result in scores:
        np.testing.assert_allclose(result.ensemble_probability, scores_alone.ensemble_probability, rtol=0, atol=PROB_TOL)
    for key in EXPLAINED_KEYS:
        assert not shared.runners[key].lock.locked()

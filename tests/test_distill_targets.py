"""distill_targets: teacher logits from a converted model (the shipped voters) as from a checkpoint."""
import numpy as np
import torch

import data_handler
from conftest import write_random_models
from distill_targets import checkpoint_logits
from model_store import load_converted_model


def test_a_converted_teacher_gives_its_own_raw_logits(tmp_path):
    models = write_random_models(tmp_path / "models", keys=("cnn_transformer", "efficientnet"), ensemble=False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    for key in ("cnn_transformer", "efficientnet"):
        logits = checkpoint_logits(str(models / f"{key}.json"), images, batch_size=2)
        loaded = load_converted_model(models / f"{key}.json")
        m = loaded.manifest
        batch = torch.from_numpy(images).permute(0, 3, 1, 2)
        with torch.no_grad():
            expected = loaded.model.eval()(data_handler.eval_transform(m["input_size"], m["mean"], m["std"])(batch))
        assert logits.shape == (5,)
        np.testing.assert_allclose(logits, expected.reshape(-1).numpy(), rtol=1e-4, atol=1e-5)
        assert np.std(logits) > 0            # the images are told apart, not one constant

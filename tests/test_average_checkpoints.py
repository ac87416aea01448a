"""scripts/average_checkpoints.py: a uniform average of one run's checkpoints that the converter reads."""
import json

import pytest
import torch

from script_loader import load_script
from training_engine import load_checkpoint, save_checkpoint

KEY = "cnn_transformer"


def fake_checkpoint(path, seed, epoch, input_size=64):
    """A checkpoint in the training engine's format around a real registry model with random weights."""
    from registry import get_spec
    torch.manual_seed(seed)
    model = get_spec(KEY).build(input_size, pretrained=False)
    for t in model.state_dict().values():        # make the batch-norm statistics differ between inputs too
        if t.is_floating_point():
            t.add_(torch.randn_like(t) * 0.01)
        else:
            t.fill_(100 * epoch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = {"model": KEY, "input_size": input_size, "arch_args": {}, "command": f"train epoch {epoch}"}
    history = [{"epoch": e, "val_auc": 0.5 + e / 100} for e in range(1, epoch + 1)]
    save_checkpoint(path, {"model": state, "raw_model": state, "config": json.dumps(config),
                           "history": json.dumps(history), "epoch": epoch - 1, "best_auc": 0.5 + epoch / 100,
                           "best_loss": 1.0, "elapsed_s": 60.0 * epoch, "optimizer": {"state": {}}})
    return path


def test_the_average_is_the_element_wise_mean_and_loads_as_a_model(tmp_path):
    avg = load_script("average_checkpoints")
    paths = [fake_checkpoint(tmp_path / f"e{e}.pt", seed=e, epoch=e) for e in (3, 4, 5)]
    out = tmp_path / "soup.pt"
    assert avg.main([*map(str, paths), "--out", str(out)]) == 0
    soup = load_checkpoint(out)
    inputs = [load_checkpoint(p)["model"] for p in paths]
    floats = [k for k, v in inputs[0].items() if v.is_floating_point()]
    counters = [k for k, v in inputs[0].items() if not v.is_floating_point()]
    assert floats and counters
    for k in floats:
        torch.testing.assert_close(soup["model"][k], sum(sd[k] for sd in inputs) / 3, rtol=0, atol=1e-6)
        assert not torch.equal(soup["model"][k], inputs[-1][k])
    for k in counters:                            # num_batches_tracked: the last input's, not a mean
        assert torch.equal(soup["model"][k], inputs[-1][k])
    assert "optimizer" not in soup                # it cannot be resumed as one of the run's epochs
    assert [e["epoch"] for e in json.loads(soup["averaged_from"])] == [3, 4, 5]
    assert soup["history"] == load_checkpoint(paths[-1])["history"]

    from model_store import model_from_checkpoint
    model, config, _ = model_from_checkpoint(out)
    assert config["model"] == KEY
    torch.testing.assert_close(model.state_dict()[floats[0]], soup["model"][floats[0]])


def test_the_converted_manifest_records_which_epochs_were_averaged(tmp_path):
    avg = load_script("average_checkpoints")
    paths = [fake_checkpoint(tmp_path / f"e{e}.pt", seed=e, epoch=e) for e in (1, 2)]
    soup = avg.average_checkpoints(paths)
    from convert_models import training_section
    section = training_section(json.loads(soup["config"]), soup)
    assert [e["epoch"] for e in section["averaged_from"]] == [1, 2]
    assert section["averaged_from"][0]["file"] == str(paths[0])
    plain = training_section(json.loads(soup["config"]), load_checkpoint(paths[1]))
    assert "averaged_from" not in plain


def test_checkpoints_of_different_models_are_refused_with_a_message(tmp_path):
    avg = load_script("average_checkpoints")
    a = fake_checkpoint(tmp_path / "a.pt", seed=1, epoch=1, input_size=64)
    b = fake_checkpoint(tmp_path / "b.pt", seed=2, epoch=2, input_size=96)
    with pytest.raises(SystemExit, match="input_size"):
        avg.main([str(a), str(b), "--out", str(tmp_path / "soup.pt")])
    assert not (tmp_path / "soup.pt").exists()
    with pytest.raises(SystemExit, match="must not be one of the inputs"):
        avg.main([str(a), str(a), "--out", str(a)])

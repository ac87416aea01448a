"""The training pipeline end to end on a tiny synthetic dataset the test makes.

Each train_*.py trains, its checkpoint converts, and the converted model loads in the engine and CLI;
MLflow records the run; a kill -9 mid-training resumes to the same result; torchrun runs DDP.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_face_dataset
from registry import MODEL_KEYS

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

pytestmark = pytest.mark.slow   # subprocess trainings: `make test-fast` leaves them out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_face_dataset(tmp_path_factory.mktemp("faces"))


def train_cmd(key, data, out, cache, *extra):
    return [PY, str(ROOT / f"train_{key}.py"), "--data-dir", str(data), "--output-dir", str(out),
            "--input-size", "64", "--batch-size", "8", "--cache-dir", str(cache), "--threads", "1", *extra]


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_each_train_script_trains_converts_and_serves(key, dataset, tmp_path, astronaut_jpg):
    out = tmp_path / "runs"
    proc = subprocess.run(train_cmd(key, dataset, out, tmp_path / "cache", "--epochs", "1", "--no-mlflow"),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((out / key / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["config"]["input_size"] == 64
    assert summary["config"]["device"] == "cpu"     # the model card tells CPU from GPU minutes by it
    models_dir = tmp_path / "converted"
    from convert_models import convert_checkpoint
    manifest = convert_checkpoint(str(out / key / "best.pt"), str(dataset), models_dir, None)
    assert manifest["input_size"] == 64 and 0.05 <= manifest["temperature"] <= 20
    assert 0.0 <= manifest["metrics"]["test"]["auc"] <= 1.0
    assert "evaluate.py" in manifest["metrics"]["test"]["command"]
    from registry import get_spec
    from scoring import ScoringEngine, recorded_shifts, view_words
    # A lone member votes, so it is calibrated on its registry views, and the manifest says which.
    assert manifest["test_time_shifts"] == list(get_spec(key).test_time_shifts)
    assert manifest["test_time_augmentation"] == view_words(key)
    assert recorded_shifts(manifest) == get_spec(key).test_time_shifts
    assert ScoringEngine(models_dir).status[key].state == "loaded"
    cli = subprocess.run([PY, str(ROOT / "predict.py"), str(astronaut_jpg), "--models-dir", str(models_dir), "--json"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    report = json.loads(cli.stdout.strip().splitlines()[-1])
    assert list(report["models"]) == [key] and report["verdict"] in ("REAL", "FAKE")


def test_a_continued_model_s_manifest_carries_the_earlier_phase(dataset, tmp_path):
    """Training from a converted model (--init-weights) and converting over it: the new manifest's
    training section names the weights it started from (SHA-256) and carries their training section."""
    from convert_models import convert_checkpoint
    models_dir = tmp_path / "converted"
    first = tmp_path / "first"
    subprocess.run(train_cmd("cnn_transformer", dataset, first, tmp_path / "cache", "--epochs", "1", "--no-mlflow"),
                   cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=600)
    before = convert_checkpoint(str(first / "cnn_transformer" / "best.pt"), str(dataset), models_dir, None)
    assert "continued_from" not in before["training"]
    second = tmp_path / "second"
    init = models_dir / "cnn_transformer.safetensors"
    subprocess.run(train_cmd("cnn_transformer", dataset, second, tmp_path / "cache", "--epochs", "1", "--no-mlflow",
                             "--init-weights", str(init), "--lr", "1e-4"),
                   cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=600)
    after = convert_checkpoint(str(second / "cnn_transformer" / "best.pt"), str(dataset), models_dir, None)
    earlier = after["training"]["continued_from"]
    assert earlier["sha256"] == before["sha256"] != after["sha256"]
    assert earlier["training"]["command"] == before["training"]["command"]
    assert earlier["training"]["history"] == before["training"]["history"]
    assert earlier["test_auc"] == before["metrics"]["test"]["auc"]


@pytest.mark.parametrize("key, served_args, more", [
    ("efficientnet", {"variant": "lite2"}, ["--erase", "0.5"]),
    ("cross_attention", {"trunk": "mobilenet_v2"}, ["--arch-arg", "encoder_drop_path_rate=0.2"])])
def test_a_model_trained_with_stochastic_depth_converts_without_it_and_scores_as_its_checkpoint(
        key, served_args, more, dataset, tmp_path):
    """drop_path_rate / drop_rate (timm's, and the custom models' own; encoder_drop_path_rate, theirs
    only) regularise training only: the converted manifest leaves them out (its validator refuses an
    argument naming a "path"), keeps them in the recorded command, and the served model computes what
    the checkpoint's model computes in eval mode."""
    out = tmp_path / "runs"
    subprocess.run(train_cmd(key, dataset, out, tmp_path / "cache", "--epochs", "1", "--no-mlflow",
                             "--arch-arg", "drop_path_rate=0.2", "--arch-arg", "drop_rate=0.3", *more),
                   cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=600)
    from convert_models import convert_checkpoint
    from model_store import load_converted_model, model_from_checkpoint
    best = out / key / "best.pt"
    trained, config, _ = model_from_checkpoint(best)
    assert config["arch_args"]["drop_path_rate"] == 0.2 and config["arch_args"]["drop_rate"] == 0.3
    assert config["erase"] == (0.5 if "--erase" in more else 0.0)    # random erasing is recorded too
    manifest = convert_checkpoint(str(best), str(dataset), tmp_path / "converted", None)
    assert manifest["architecture"]["args"] == served_args
    assert "drop_path_rate=0.2" in manifest["training"]["command"]
    served = load_converted_model(tmp_path / "converted" / f"{key}.json")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = trained(x), served.model(x)
    assert torch.allclose(got, expected, atol=2e-2 * (1 + expected.abs().max().item()))   # fp16 weights


def test_an_erasing_probability_outside_0_1_is_refused_before_any_work(dataset, tmp_path):
    refused = subprocess.run(train_cmd("efficientnet", dataset, tmp_path / "r", tmp_path / "cache", "--epochs", "1",
                                       "--no-mlflow", "--erase", "1.5"),
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "--erase is a probability" in refused.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("form, differ", [("kl", "all"), ("relative", "framing"), ("relative", "nudge")])
def test_consistency_training_sees_two_views_and_records_their_divergence(form, differ, dataset, tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run(train_cmd("cnn_transformer", dataset, out, tmp_path / "cache", "--epochs", "1",
                                    "--no-mlflow", "--consistency", "1", "--consistency-form", form,
                                    "--views-differ", differ),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "cnn_transformer" / "summary.json").read_text())
    assert summary["config"]["views"] == 2 and summary["config"]["consistency"] == 1.0
    assert summary["config"]["consistency_form"] == form and summary["config"]["views_differ"] == differ
    assert summary["history"][0]["train_view_divergence"] > 0
    assert 0 < summary["history"][0]["train_view_variance_share"] <= 1
    if form == "relative":
        return
    refused = subprocess.run(train_cmd("cnn_transformer", dataset, tmp_path / "r", tmp_path / "cache", "--epochs", "1",
                                       "--no-mlflow", "--consistency", "1", "--views", "1"),
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "--views 2" in refused.stderr


def test_ema_keeps_the_average_as_the_model_and_the_raw_weights_for_resuming(dataset, tmp_path):
    from training_engine import load_checkpoint
    out = tmp_path / "runs"
    cmd = train_cmd("cnn_transformer", dataset, out, tmp_path / "cache", "--no-mlflow", "--ema", "0.9")
    first = subprocess.run([*cmd, "--epochs", "1"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = load_checkpoint(out / "cnn_transformer" / "last.pt")
    averaged, raw = ckpt["model"], ckpt["raw_model"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw if raw[k].is_floating_point())
    resumed = subprocess.run([*cmd, "--epochs", "2"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-2000:]
    summary = json.loads((out / "cnn_transformer" / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2] and summary["config"]["ema"] == 0.9
    assert all(0.0 <= h["raw_val_auc"] <= 1.0 for h in summary["history"])


def test_lineage_only_trusts_a_manifest_that_describes_the_init_weights(tmp_path):
    from convert_models import lineage
    from fileio import sha256_of
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"weights")
    sha = sha256_of(weights)
    manifest = {"sha256": sha, "training": {"command": "train_x.py"}, "metrics": {"test": {"auc": 0.9}}}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    assert lineage({}) is None
    got = lineage({"init_weights": str(weights)})                    # sha not recorded: the file's own
    assert got["sha256"] == sha and got["training"]["command"] == "train_x.py" and got["test_auc"] == 0.9
    other = lineage({"init_weights": str(weights), "init_weights_sha256": "0" * 64})
    assert other == {"file": str(weights), "sha256": "0" * 64,
                     "note": "the manifest beside this file now describes other weights"}
    (tmp_path / "m.json").unlink()
    assert lineage({"init_weights": str(weights), "init_weights_sha256": sha}) == {"file": str(weights), "sha256": sha}


def test_lineage_follows_a_training_checkpoint_back_to_the_converted_model(tmp_path):
    """A run started from another run's checkpoint (`--init-weights runs/.../best.pt`) keeps the whole
    chain: that run's command and history, and the converted model it started from."""
    from convert_models import lineage
    from fileio import sha256_of
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"weights")
    (tmp_path / "m.json").write_text(json.dumps({"sha256": sha256_of(weights), "training": {"command": "first"}}))
    earlier = {"model": "cnn_transformer", "input_size": 128, "command": "second", "epoch_samples": 64,
               "init_weights": str(weights), "init_weights_sha256": sha256_of(weights)}
    checkpoint = tmp_path / "best.pt"
    torch.save({"config": json.dumps(earlier), "history": json.dumps([{"epoch": 1, "val_auc": 0.9}]),
                "epoch": 0, "best_auc": 0.9, "elapsed_s": 12.0}, checkpoint)
    got = lineage({"init_weights": str(checkpoint), "init_weights_sha256": sha256_of(checkpoint)})
    assert got["sha256"] == sha256_of(checkpoint)
    assert got["training"]["command"] == "second" and got["training"]["history"] == [{"epoch": 1, "val_auc": 0.9}]
    assert got["training"]["continued_from"]["training"] == {"command": "first"}
    # The checkpoint was overwritten since the run started: not followed.
    moved = lineage({"init_weights": str(checkpoint), "init_weights_sha256": "0" * 64})
    assert "training" not in moved and "other weights" in moved["note"]
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "not a readable training checkpoint" in lineage({"init_weights": str(tmp_path / "junk.pt")})["note"]


def test_mlflow_records_params_metrics_and_artifacts(dataset, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    proc = subprocess.run(train_cmd("cnn_transformer", dataset, tmp_path / "runs", tmp_path / "cache", "--epochs", "2",
                                    "--mlflow-uri", uri, "--experiment", "t"),
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name.startswith("cnn_transformer-")
    assert run.data.params["lr"] and run.data.params["weight_decay"]
    for metric in ("train_loss", "val_loss", "val_accuracy", "val_auc", "val_ap", "val_eer", "lr"):
        assert len(client.get_metric_history(run.info.run_id, metric)) == 2, metric
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"roc_curve.png", "confusion_matrix.png", "checkpoint"} <= artifacts


def _weights(path):
    from training_engine import load_checkpoint
    return load_checkpoint(path)["model"]


def test_kill_9_then_rerun_resumes_to_the_same_result(dataset, tmp_path):
    args = ["--epochs", "4", "--sbi", "0.3", "--mlflow-uri", f"sqlite:///{tmp_path / 'ml.db'}"]
    # Reference: an uninterrupted run.
    ref = subprocess.run(train_cmd("cnn_transformer", dataset, tmp_path / "ref", tmp_path / "cache", *args),
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    # Interrupted: kill -9 once the first epoch's checkpoint exists, then rerun the same command.
    cmd = train_cmd("cnn_transformer", dataset, tmp_path / "run", tmp_path / "cache", *args)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = tmp_path / "run" / "cnn_transformer" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "first epoch never checkpointed"
    assert not (tmp_path / "run" / "cnn_transformer" / "summary.json").exists(), "run finished before the kill"
    at_kill = torch.load(last, weights_only=True)
    epoch_at_kill, run_id_at_kill = at_kill["epoch"] + 1, at_kill["mlflow_run_id"]
    assert epoch_at_kill < 4
    resumed = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after epoch {epoch_at_kill}" in resumed.stdout
    summary = json.loads((tmp_path / "run" / "cnn_transformer" / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4]
    # Same optimizer, scheduler and RNG state: the resumed run ends where the uninterrupted one did.
    ref_w, run_w = _weights(tmp_path / "ref" / "cnn_transformer" / "last.pt"), _weights(last)
    for name in ref_w:
        torch.testing.assert_close(run_w[name], ref_w[name], rtol=1e-4, atol=1e-5, msg=name)
    # ... and logged to the same MLflow run, one point per epoch.
    import mlflow
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'ml.db'}")
    assert summary["mlflow_run_id"] == run_id_at_kill
    steps = sorted(m.step for m in client.get_metric_history(run_id_at_kill, "val_auc"))
    assert steps == [1, 2, 3, 4]


def test_torchrun_two_processes_shard_data_and_end_with_identical_weights(dataset, tmp_path):
    out = tmp_path / "ddp"
    torchrun = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(torchrun + train_cmd("cnn_transformer", dataset, out, tmp_path / "cache",
                                               "--epochs", "1", "--no-mlflow", "--log-samples", "--device", "cpu")[1:],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    d = out / "cnn_transformer"
    r0 = json.loads((d / "samples-rank0-epoch1.json").read_text())["indices"]
    r1 = json.loads((d / "samples-rank1-epoch1.json").read_text())["indices"]
    assert r0 and r1 and not set(r0) & set(r1), "ranks saw overlapping data"
    w0 = json.loads((d / "weights-rank0.json").read_text())["sha256"]
    w1 = json.loads((d / "weights-rank1.json").read_text())["sha256"]
    assert w0 == w1
    summary = json.loads((d / "summary.json").read_text())
    assert summary["config"]["world_size"] == 2


def test_ensemble_refit_caches_a_member_it_had_to_score(tmp_path, monkeypatch):
    """A member without valid cached logits (e.g. an advisory Xception converted before) is scored once
    and cached, keyed by its weights, temperature and test-time augmentation; the next refit reads it."""
    import numpy as np
    import convert_models
    models, runs = tmp_path / "models", tmp_path / "runs"
    models.mkdir()
    (models / "xception.json").write_text(json.dumps({"sha256": "ab" * 32, "temperature": 0.7,
                                                       "test_time_augmentation": "none"}))
    scored = []

    def fake_logits(engine, key, paths):
        assert engine == "installed"       # scored as installed (its manifest's views), not recalibrated
        scored.append(len(paths))
        return np.linspace(-1, 1, len(paths)), np.arange(len(paths))

    monkeypatch.setattr(convert_models, "_installed_engine", lambda out_dir, key: "installed")
    monkeypatch.setattr(convert_models, "_calibration_engine", lambda out_dir, key: "registry")
    monkeypatch.setattr(convert_models, "_split_paths", lambda ddir, split: (["a", "b", "c"], np.array([0, 1, 1])))
    monkeypatch.setattr(convert_models, "_calibrated_logits", fake_logits)
    first = convert_models._member_logits(models, "xception", runs, "data", "cross")
    assert scored == [3, 3, 3] and (runs / "xception" / "eval_logits.npz").exists()
    second = convert_models._member_logits(models, "xception", runs, "data", "cross")
    assert scored == [3, 3, 3]                                   # read from the cache, not scored again
    assert second.keys() >= first.keys() and np.array_equal(second["val_logits"], first["val_logits"])
    # Other weights under the same name: scored again.
    (models / "xception.json").write_text(json.dumps({"sha256": "cd" * 32, "temperature": 0.7,
                                                       "test_time_augmentation": "none"}))
    convert_models._member_logits(models, "xception", runs, "data", "cross")
    assert scored == [3, 3, 3] * 2


def test_the_epoch_log_keeps_small_learning_rates():
    from training_engine import _four_digits

    assert _four_digits(5e-5) == 5e-5      # round(5e-5, 4) gave 0.0001
    assert _four_digits(0.959237) == 0.9592
    assert _four_digits(347.74) == 347.7


def test_paired_training_batches_each_real_with_the_fake_of_its_group(dataset, tmp_path):
    """--paired on a manifest whose groups pair a real with a fake: every logged batch position pair
    holds one group's real and fake; on folders (no shared groups) it stops with a message."""
    import pandas as pd
    reals, fakes = sorted((dataset / "real").rglob("*.png")), sorted((dataset / "fake").rglob("*.png"))
    rows = [{"path": str(p), "label": label, "group": f"v{i}", "split": "val" if i < 6 else "train"}
            for label, files in (("real", reals), ("fake", fakes)) for i, p in enumerate(files)]
    manifest = tmp_path / "metadata.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp_path / "runs"
    proc = subprocess.run(train_cmd("cnn_transformer", manifest, out, tmp_path / "cache", "--epochs", "1",
                                    "--no-mlflow", "--paired", "--log-samples"),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    indices = json.loads((out / "cnn_transformer" / "samples-rank0-epoch1.json").read_text())["indices"]
    train_rows = [r for r in rows if r["split"] == "train"]
    # the engine's train split keeps the manifest's order
    assert len(indices) == len(train_rows) and len(set(indices)) == len(indices)
    for a, b in zip(indices[0::2], indices[1::2]):
        assert train_rows[a]["group"] == train_rows[b]["group"]
        assert {train_rows[a]["label"], train_rows[b]["label"]} == {"real", "fake"}
    assert json.loads((out / "cnn_transformer" / "summary.json").read_text())["config"]["paired"] is True
    folders = subprocess.run(train_cmd("cnn_transformer", dataset, tmp_path / "runs2", tmp_path / "cache",
                                       "--epochs", "1", "--no-mlflow", "--paired"),
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert folders.returncode != 0 and "--paired needs a dataset whose groups hold real and fake" in folders.stderr

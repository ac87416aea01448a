"""scripts/learning_curves.py: curves come from the manifests' histories, oldest run first."""
import json

from script_loader import load_script


def _curves():
    return load_script("learning_curves")


def _history(*aucs):
    return [{"epoch": i, "val_auc": a} for i, a in enumerate(aucs, 1)]


def test_curve_orders_runs_oldest_first_and_counts_faces_seen():
    lc = _curves()
    first = {"command": "train_x.py --lr 3e-4 --trunk-lr 1e-4", "pretrained_trunk": True,
             "samples_per_epoch": 1000, "history": _history(0.7, 0.8, 0.85)}
    second = {"command": "train_x.py --lr 1e-4 --init-weights converted_models/x.safetensors",
              "samples_per_epoch": 500, "history": _history(0.86, 0.87),
              "continued_from": {"sha256": "a", "training": first}}
    rows = lc.curve({"training": second})
    assert [r["val_auc"] for r in rows] == [[0.7, 0.8, 0.85], [0.86, 0.87]]
    assert [r["faces_before"] for r in rows] == [0, 3000]
    assert [r["lr"] for r in rows] == ["3e-4 / 1e-4", "1e-4 / default"]
    assert [r["start"] for r in rows] == ["ImageNet trunk", "the run above"]


def test_a_run_from_unrecorded_weights_says_so(tmp_path, capsys):
    lc = _curves()
    run = {"command": "train_x.py --init-weights converted_models/xception.safetensors --lr 1e-3",
           "samples_per_epoch": 100, "history": _history(0.6)}
    (tmp_path / "xception.json").write_text(json.dumps({"training": run}))
    lc.main(["--models-dir", str(tmp_path), "--plot", str(tmp_path / "c.png")])
    table = capsys.readouterr().out
    assert "| `xception` | 1 | `xception.safetensors` (earlier runs not recorded) | 1e-3 / default | 0 | 0.600 |" in table
    assert (tmp_path / "c.png").stat().st_size > 1000

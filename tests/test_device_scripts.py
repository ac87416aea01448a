"""The scripts that prepare and bring back training on a lent GPU machine (scripts/device/).

Nothing here needs a GPU: the pack is made and checked on the CPU, and a slim checkpoint must convert
to exactly the model that the full checkpoint converts to.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_face_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "device"))
from pack_parts import pack_parts, plan_parts  # noqa: E402
from pack_subset import pack, packed_path  # noqa: E402
from slim_checkpoint import slim  # noqa: E402


def _dataset_with_groups(root: Path) -> Path:
    """make_face_dataset's images with a metadata.csv: a real and a fake per group, all three splits."""
    make_face_dataset(root, per_class=12)
    reals, fakes = sorted((root / "real").rglob("*.png")), sorted((root / "fake").rglob("*.png"))
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group", "split"])
        for i, (r, k) in enumerate(zip(reals, fakes)):
            split = "train" if i < 8 else ("val" if i < 10 else "test")
            w.writerow([r.relative_to(root).as_posix(), "real", f"g{i}", split])
            w.writerow([k.relative_to(root).as_posix(), "fake", f"g{i}", split])
    return root


def test_the_pack_holds_whole_groups_within_its_budget(tmp_path):
    from data_handler import load_records

    data = _dataset_with_groups(tmp_path / "data")
    sizes = {p: p.stat().st_size for p in data.rglob("*.png")}
    budget = sum(sizes.values()) * 0.5 / 2**20          # about half of all the bytes
    info = pack(str(data), str(tmp_path / "pack"), budget_mib=budget, val_share=0.2, seed=1)
    assert 0 < info["bytes"] <= budget * 2**20
    records = load_records(tmp_path / "pack")
    assert set(records["split"]) == {"train", "val"}                 # never the test split
    assert all(sorted(labels) == [0, 1] for _, labels in records.groupby("group")["label"])   # whole groups
    assert info["train"] == (records["split"] == "train").sum() and info["val"] == (records["split"] == "val").sum()
    assert info["train"] < 16                                         # the budget did cut
    for path in records["path"]:                                      # the same bytes, not re-encoded
        original = data / Path(path).relative_to((tmp_path / "pack").resolve())
        assert Path(path).read_bytes() == original.read_bytes()
    pack(str(data), str(tmp_path / "pack"), budget_mib=budget, seed=2)    # an earlier pack is replaced
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):                             # anything else is left alone
        pack(str(data), str(other), budget_mib=budget)
    assert (other / "keep.txt").read_text() == "mine"


def test_parts_hold_every_train_and_val_crop_once_within_their_budgets(tmp_path):
    import io
    import zipfile

    data = _dataset_with_groups(tmp_path / "data")
    train_val = [r for r in csv.DictReader(open(data / "metadata.csv")) if r["split"] != "test"]
    budget = sum((data / r["path"]).stat().st_size for r in train_val) / 3 / 2**20
    info = pack_parts(str(data), str(tmp_path / "pack"), [budget, budget])
    assert len(info) == 3
    assert all(part["bytes"] <= budget * 2**20 for part in info[:2])      # zip headers counted too
    assert info[0]["val"] == info[1]["val"] == 0 and info[2]["val"] > 0    # val and the manifest travel last
    seen = {}
    for k, part in enumerate(info):
        with zipfile.ZipFile(part["file"]) as z:
            names = [n for n in z.namelist() if n != "metadata.csv"]
            assert ("metadata.csv" in z.namelist()) == (k == 2)
            for name in names:
                assert name not in seen                                # each crop once
                seen[name] = z.read(name)
            if k == 2:
                manifest = list(csv.DictReader(io.StringIO(z.read("metadata.csv").decode())))
    assert {r["path"] for r in manifest} == set(seen) == {r["path"] for r in train_val}   # never test
    assert all(seen[r["path"]] == (data / r["path"]).read_bytes() for r in train_val)    # bytes as they are
    assert {(r["path"], r["label"], r["split"]) for r in manifest} == {(r["path"], r["label"], r["split"]) for r in train_val}


def test_a_crop_keeps_its_path_under_the_dataset_and_one_outside_goes_under_its_label():
    root = Path("/data/dfdc")
    assert packed_path(Path("/data/dfdc/real/a/x.jpg"), root, "real") == Path("real/a/x.jpg")
    assert packed_path(Path("/elsewhere/y.jpg"), root, "fake") == Path("fake/y.jpg")


def test_part_planning_is_first_fit_and_never_drops_a_file():
    assert plan_parts([100, 100, 100], [2**20, 0]) == [[0, 1, 2], [], []]
    assert plan_parts([10**6, 10**6, 10], [10**6 + 500, 10**6 + 500]) == [[0, 2], [1], []]
    assert plan_parts([10**6] * 3, [10**6 + 500]) == [[0], [1, 2]]


@pytest.mark.slow
def test_a_slim_checkpoint_converts_to_the_same_model(tmp_path):
    from convert_models import convert_checkpoint

    data = make_face_dataset(tmp_path / "data")
    out = tmp_path / "runs"
    cmd = [sys.executable, str(ROOT / "train_cnn_transformer.py"), "--data-dir", str(data), "--output-dir", str(out),
           "--input-size", "64", "--batch-size", "8", "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
           "--epochs", "1", "--no-mlflow"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    best = out / "cnn_transformer" / "best.pt"
    full = torch.load(best, map_location="cpu", weights_only=True)
    slimmed = slim(full)
    assert "optimizer" not in slimmed and "rng" not in slimmed
    assert all(v.dtype == torch.float16 for v in slimmed["model"].values() if v.is_floating_point())
    small = tmp_path / "slim.pt"
    subprocess.run([sys.executable, str(ROOT / "scripts/device/slim_checkpoint.py"), str(best), str(small)],
                   check=True, capture_output=True)
    assert small.stat().st_size < best.stat().st_size / 2
    # Cut and joined as the device trip does it, then converted: the shipped fp16 weights are identical.
    parts = [small.read_bytes()[i:i + 100_000] for i in range(0, small.stat().st_size, 100_000)]
    joined = tmp_path / "joined.pt"
    joined.write_bytes(b"".join(parts))
    a = convert_checkpoint(str(best), str(data), tmp_path / "from_full", None)
    b = convert_checkpoint(str(joined), str(data), tmp_path / "from_slim", None)
    from safetensors.torch import load_file
    shipped_full = load_file(tmp_path / "from_full/cnn_transformer.safetensors")
    shipped_slim = load_file(tmp_path / "from_slim/cnn_transformer.safetensors")
    assert shipped_full.keys() == shipped_slim.keys()
    assert all(torch.equal(shipped_full[k], shipped_slim[k]) for k in shipped_full)
    assert a["training"]["history"] == b["training"]["history"] and a["temperature"] == b["temperature"]


@pytest.mark.slow
def test_the_device_script_trains_each_model_with_its_own_settings_and_hands_back_its_parts(tmp_path):
    """train_on_device.sh run here on the CPU (DEVICE=cpu): LR_<key> overrides LR for that model
    alone, and each model's slim checkpoint comes back in parts that join into a loadable checkpoint."""
    data = _dataset_with_groups(tmp_path / "data")
    out, keep = tmp_path / "out", tmp_path / "keep"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "KEEP": str(keep), "RUNS": str(tmp_path / "runs"), "DEVICE": "cpu",
           "DATA": str(data), "MODELS": "cnn_transformer cross_attention", "MINUTES": "5", "SIZE": "64",
           "BATCH": "8", "LR": "2e-4", "LR_cross_attention": "7e-4", "EXTRA_cnn_transformer": "--epochs 1",
           "EXTRA_cross_attention": "--epochs 1", "PY": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts/device/train_on_device.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / "device_training.log").stat().st_size > 0
    for key, lr in (("cnn_transformer", 2e-4), ("cross_attention", 7e-4)):
        parts = sorted(out.glob(f"{key}.pt.part-*"))
        assert parts, proc.stdout[-2000:]
        joined = tmp_path / f"{key}.pt"
        joined.write_bytes(b"".join(p.read_bytes() for p in parts))
        checkpoint = torch.load(joined, map_location="cpu", weights_only=True)
        config = json.loads(checkpoint["config"])
        assert config["model"] == key and config["lr"] == pytest.approx(lr) and config["device"] == "cpu"

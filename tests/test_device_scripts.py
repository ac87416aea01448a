"""The scripts that prepare and bring back training on a lent GPU machine (scripts/device/).

Nothing here needs a GPU: the pack is made and checked on the CPU, and a slim checkpoint must convert
to exactly the model that the full checkpoint converts to.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_face_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "device"))
from pack_subset import pack  # noqa: E402
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

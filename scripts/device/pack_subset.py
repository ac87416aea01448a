"""Pack a training subset small enough to travel with the repository to a lent GPU machine.

The device tool sends the work tree and nothing beside it (at most 64 MiB), so `../shared/datasets`
stays behind. This copies whole groups (a real face and the fake made from it) of the `train` split,
and a slice of `val` for choosing the checkpoint, into an ignored folder of the repository, with a
`metadata.csv` in the dataset's own format, until a byte budget is reached. The JPEG files are copied
as they are (no re-encoding), so the models see the same pixels as in CPU training.

    .venv/bin/python scripts/device/pack_subset.py --data-dir ../shared/datasets/dfdc-faces

The folder is git-ignored (`device_pack/`): the images are never committed. docs/training.md,
"If a device is lent", gives the whole procedure.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from data_handler import load_records  # noqa: E402

DEFAULT_OUT = "device_pack"
DEFAULT_BUDGET_MIB = 50.0    # + ~2 MB of repository stays well under the tool's 64 MiB
DEFAULT_VAL_SHARE = 0.1      # of the budget, for validation during device training


def packed_path(source: Path, root: Path, label: str) -> Path:
    """Where a crop goes inside a pack: its path under the dataset's folder, or `label/name` for a
    manifest row that points outside it."""
    return source.relative_to(root) if source.is_relative_to(root) else Path(label) / source.name


def pick_groups(records, split: str, budget_bytes: int, seed: int) -> list:
    """Whole groups of `split`, in a seeded random order, while their files fit in `budget_bytes`."""
    rows = records[records["split"] == split]
    groups = sorted(rows["group"].astype(str).unique())
    order = np.random.default_rng(seed).permutation(len(groups))
    by_group = {g: part for g, part in rows.groupby(rows["group"].astype(str))}
    picked, used = [], 0
    for i in order:
        part = by_group[groups[i]]
        size = sum(os.path.getsize(p) for p in part["path"])
        if used + size > budget_bytes:
            continue                    # a smaller group further on may still fit
        picked.append(part)
        used += size
    return picked


def pack(data_dir: str, out: str, budget_mib: float = DEFAULT_BUDGET_MIB, val_share: float = DEFAULT_VAL_SHARE,
         seed: int = 0) -> dict:
    """Copy the subset into `out` (replacing an earlier pack); returns what was packed."""
    records = load_records(data_dir)
    root = (Path(data_dir) if Path(data_dir).is_dir() else Path(data_dir).parent).resolve()
    budget = int(budget_mib * 1024 * 1024)
    parts = {"val": pick_groups(records, "val", int(budget * val_share), seed)}
    parts["train"] = pick_groups(records, "train", budget - sum(
        os.path.getsize(p) for part in parts["val"] for p in part["path"]), seed)
    out_dir = Path(out)
    if out_dir.exists():
        # Only an earlier pack is replaced: any other folder given by mistake is left as it is.
        if not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "metadata.csv").is_file()):
            raise FileExistsError(f"{out_dir} exists and is not an earlier pack (no metadata.csv): "
                                  f"choose another --out")
        shutil.rmtree(out_dir)
    rows, total = [], 0
    for split, groups in parts.items():
        for part in groups:
            for _, r in part.iterrows():
                source = Path(r["path"])
                label = "fake" if int(r["label"]) == 1 else "real"
                relative = packed_path(source, root, label)
                target = out_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                total += target.stat().st_size
                rows.append({"path": relative.as_posix(), "label": label, "group": r["group"], "split": split})
    with open(out_dir / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "group", "split"])
        writer.writeheader()
        writer.writerows(rows)
    counts = {s: sum(1 for r in rows if r["split"] == s) for s in ("train", "val")}
    return {"out": str(out_dir), "bytes": total, **counts,
            "fake_share": round(sum(r["label"] == "fake" for r in rows) / max(len(rows), 1), 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="dataset folder with metadata.csv (e.g. dfdc-faces)")
    p.add_argument("--out", default=DEFAULT_OUT, help="ignored folder inside the repository")
    p.add_argument("--budget-mib", type=float, default=DEFAULT_BUDGET_MIB)
    p.add_argument("--val-share", type=float, default=DEFAULT_VAL_SHARE)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        info = pack(a.data_dir, a.out, a.budget_mib, a.val_share, a.seed)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"packed {info['train']} train and {info['val']} val crops ({info['bytes'] / 2**20:.1f} MiB, "
          f"{info['fake_share']:.0%} fake) into {info['out']}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

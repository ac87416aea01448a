"""Pack the whole train and val splits into parts that travel to a lent GPU machine one call each.

The device tool sends the work tree (at most 64 MiB a call) and nothing beside it, so the dataset
(132 MiB of train and val crops) cannot travel in one call, and pack_subset.py's single pack holds
only a third of the train split. But a warm machine keeps what a call left outside the repository,
so three calls in a row can each carry one part and unpack it into the same folder there, and the
last one trains on every training face (docs/training.md, "If a device is lent").

Each part is an uncompressed zip (the JPEG files are already compressed; a tar's 512-byte headers and
padding would add a third to 5 KB files), filled with train crops up to its byte budget; the last part
takes the rest of train, the whole val split and the `metadata.csv` (train and val rows, never test).
The files keep their bytes and relative paths, so `--data-dir` on the unpacked folder sees the same
dataset as here.

    .venv/bin/python scripts/device/pack_parts.py --data-dir ../shared/datasets/dfdc-faces

writes device_pack/part-0.zip, part-1.zip and part-2.zip (the rest): 56.6, 58.8 and 20.8 MiB with the
default budgets of 57.6 and 59.8 MiB, which count a zip entry's headers generously. Each is
unpacked there with `python3 -m zipfile -e device_pack/part-N.zip /tmp/dfdc-faces`. The folder is
git-ignored: the images are never committed.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_handler import load_records  # noqa: E402
from pack_subset import packed_path  # noqa: E402

DEFAULT_OUT = "device_pack"
ZIP_ENTRY_OVERHEAD = 200   # bytes a stored zip adds per file (two headers with the name), rounded up


def plan_parts(sizes: list[int], budgets_bytes: list[int]) -> list[list[int]]:
    """Indices of the train files for each budgeted part, in order, first fit; whatever fits in none
    goes to one more part at the end (the one that also carries val and the manifest)."""
    parts: list[list[int]] = [[] for _ in budgets_bytes] + [[]]
    used = [0] * len(budgets_bytes)
    for i, size in enumerate(sizes):
        cost = size + ZIP_ENTRY_OVERHEAD
        for k, budget in enumerate(budgets_bytes):
            if used[k] + cost <= budget:
                parts[k].append(i)
                used[k] += cost
                break
        else:
            parts[-1].append(i)
    return parts


def pack_parts(data_dir: str, out: str, budgets_mib: list[float]) -> list[dict]:
    """Write part-0.zip ... part-N.zip into `out` (earlier parts there are replaced); returns each
    part's file, size and counts."""
    records = load_records(data_dir)
    root = (Path(data_dir) if Path(data_dir).is_dir() else Path(data_dir).parent).resolve()
    records = records[records["split"].isin(["train", "val"])].reset_index(drop=True)
    train = records[records["split"] == "train"]
    sizes = [Path(p).stat().st_size for p in train["path"]]
    positions = list(train.index)
    plan = [[positions[i] for i in part] for part in plan_parts(sizes, [int(b * 2**20) for b in budgets_mib])]
    plan[-1] += list(records.index[records["split"] == "val"])

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*.zip"):
        old.unlink()
    manifest = io.StringIO()
    writer = csv.DictWriter(manifest, fieldnames=["path", "label", "group", "split"], lineterminator="\n")
    writer.writeheader()
    relative = {}
    for i, r in records.iterrows():
        label = "fake" if int(r["label"]) == 1 else "real"
        relative[i] = packed_path(Path(r["path"]), root, label).as_posix()
        writer.writerow({"path": relative[i], "label": label, "group": r["group"], "split": r["split"]})
    info = []
    for k, rows in enumerate(plan):
        target = out_dir / f"part-{k}.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as z:
            for i in rows:
                z.write(records.at[i, "path"], arcname=relative[i])
            if k == len(plan) - 1:
                z.writestr("metadata.csv", manifest.getvalue())
        split_counts = records.loc[rows, "split"].value_counts()
        info.append({"file": str(target), "bytes": target.stat().st_size,
                     "train": int(split_counts.get("train", 0)), "val": int(split_counts.get("val", 0))})
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="dataset folder with metadata.csv (e.g. dfdc-faces)")
    p.add_argument("--out", default=DEFAULT_OUT, help="ignored folder inside the repository")
    p.add_argument("--budget-mib", type=float, nargs="+", default=[57.6, 59.8],
                   help="the size of each part but the last, which takes the rest (keep each part plus "
                        "the repository and anything else carried in the same call under 64 MiB)")
    a = p.parse_args(argv)
    for part in pack_parts(a.data_dir, a.out, a.budget_mib):
        print(f"{part['file']}: {part['bytes'] / 2**20:.1f} MiB, {part['train']} train and {part['val']} val crops")
    return 0


if __name__ == "__main__":
    sys.exit(main())

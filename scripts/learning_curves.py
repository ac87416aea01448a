"""The shipped models' learning curves, read from their manifests (no figure is typed by hand).

Each converted manifest records its run's per-epoch history and, for a run that continued a converted
model, that model's training section (`training.continued_from`, recursively). This walks that chain
oldest first and prints, per model, the validation AUC after each epoch against the number of faces
seen, as a Markdown table; with --plot it also draws them.

    .venv/bin/python scripts/learning_curves.py [--models-dir converted_models] [--plot docs/learning_curves.png]
"""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from model_card import phases, started_from  # noqa: E402
from registry import MODEL_KEYS  # noqa: E402


def learning_rates(command: str) -> str:
    """'lr / trunk lr' as the run's command gave them ('default' where it did not)."""
    found = {flag: re.search(rf"--{flag}[= ](\S+)", command or "") for flag in ("lr", "trunk-lr")}
    return " / ".join(m.group(1) if m else "default" for m in found.values())


def curve(manifest: dict) -> list[dict]:
    """One row per recorded run, oldest first: its learning rates, what it started from, the faces seen
    in the recorded runs before it, and its val AUC by epoch up to the checkpoint that was converted."""
    rows, seen = [], 0
    for run in reversed(phases(manifest.get("training") or {})):
        history = run.get("history") or []
        per_epoch = run.get("samples_per_epoch") or run.get("n_train") or 0
        init = started_from(run)
        start = "ImageNet trunk" if run.get("pretrained_trunk") else "scratch"
        if run.get("continued_from"):
            start = "the run above"
        elif init:  # weights whose own history the manifest does not hold
            start = f"`{Path(init).name}` (earlier runs not recorded)"
        rows.append({"lr": learning_rates(run.get("command", "")), "start": start, "faces_before": seen,
                     "faces_per_epoch": per_epoch,
                     "val_auc": [round(e["val_auc"], 4) for e in history if e.get("val_auc") is not None]})
        seen += per_epoch * len(history)
    return rows


def markdown(curves: dict[str, list[dict]]) -> str:
    lines = ["| model | run | started from | lr / trunk lr | faces seen before | val AUC by epoch |",
             "|---|---|---|---|---|---|"]
    for key, rows in curves.items():
        for i, row in enumerate(rows, 1):
            aucs = ", ".join(f"{a:.3f}" for a in row["val_auc"]) or "-"
            lines.append(f"| `{key}` | {i} | {row['start']} | {row['lr']} | {row['faces_before']:,} | {aucs} |")
    return "\n".join(lines)


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for key, rows in curves.items():
        xs, ys = [], []
        for row in rows:
            for epoch, auc in enumerate(row["val_auc"], 1):
                xs.append((row["faces_before"] + epoch * row["faces_per_epoch"]) / 1000)
                ys.append(auc)
        ax.plot(xs, ys, marker=".", label=key)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("faces seen in the recorded runs (thousands)")
    ax.set_ylabel("val AUC (dfdc-faces val)")
    ax.set_title("Shipped models: validation AUC by epoch, runs oldest first")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", type=Path, default=ROOT / "converted_models")
    p.add_argument("--plot", type=Path, help="also draw the curves into this PNG")
    args = p.parse_args(argv)
    curves = {}
    for key in MODEL_KEYS:
        manifest = args.models_dir / f"{key}.json"
        if manifest.exists():
            curves[key] = curve(json.loads(manifest.read_text()))
    print(markdown(curves))
    if args.plot:
        plot(curves, args.plot)


if __name__ == "__main__":
    main()

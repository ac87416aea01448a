"""Judge a training checkpoint against the installed models, the way docs/training.md's install rules
read: nothing in `converted_models/` changes; everything happens in a copy.

    .venv/bin/python scripts/judge_candidate.py --checkpoint runs/rc24/eff/efficientnet/best.pt \
        --work runs/rc24/judge [--cache-from runs/rc22/evalcache_ca] [--installed-nudge]

Steps (each a repository command, so each figure can be reproduced on its own):
1. copy `converted_models/` to WORK/installed and WORK/candidate; seed WORK/evalcache with the
   members' cached evaluation logits (`--cache-from`; members whose weights changed are scored again);
2. the installed models' figures, from those logits (before the conversion overwrites the candidate
   key's cache): every member's and the ensemble's AUC, and on the real faces the mean P(fake) and the
   false-positive rate at 0.5, on val, test and the cross-dataset set;
3. `convert_models.py --checkpoint CKPT` into WORK/candidate (calibrates on val, measures test and
   the cross-dataset set);
4. `scripts/experiments/nudge_sensitivity.py --split val --n 400 --models KEY` on the candidate (and
   on the installed model with `--installed-nudge`);
5. `convert_models.py --ensemble` refits the ensemble over the candidate set;
6. `evaluate.py --split val --stability --max-samples 200 --reframing 40` on the candidate set;
7. the candidate set's figures as in step 2, and a table of both side by side (WORK/judge.json);
   and the candidate member's val AUC minus the installed one's, with its paired 90 % interval
   (`metrics.paired_auc_of_evaluations`, on the same faces), when the key is installed.

Without `--checkpoint` it judges the code's inference instead (e.g. new test-time views) on the
installed weights: no member is converted; step 5's refit recalibrates every member whose recorded
views differ from the code's; step 4 measures the whole candidate set; and the paired interval is the
ensemble's val AUC, candidate minus installed (the installed figures come from `--cache-from`, or are
scored with the views each installed manifest records: since session 39 the engine takes a member's
views from its manifest, so a registry change does not re-score the installed side).

The install decision stays with the rule written before the run ended; this script only measures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from convert_models import _member_logits  # noqa: E402
from metrics import binary_metrics, paired_auc_of_evaluations  # noqa: E402
from model_store import read_manifest  # noqa: E402
from registry import ENSEMBLE_KEY, MODEL_KEYS  # noqa: E402
from scoring import combine, sigmoid  # noqa: E402

SETS = ("val", "test", "cross_dataset")
FIGURES = ("auc", "real_mean_p", "fpr")


def figures_from_logits(members: dict[str, dict[str, np.ndarray]], ensemble: dict) -> dict:
    """{model or ensemble: {set: {auc, real_mean_p, fpr, ...}}} from each member's calibrated logits
    per set (`members[key][f"{set}_logits"]`, `f"{set}_labels"`) and an ensemble manifest body."""
    keys = list(members)
    sets = [s for s in SETS if all(f"{s}_logits" in members[k] for k in keys)]
    out = {k: {s: binary_metrics(members[k][f"{s}_labels"], sigmoid(members[k][f"{s}_logits"])) for s in sets}
           for k in keys}
    out[ENSEMBLE_KEY] = {}
    for s in sets:
        logits = {k: members[k][f"{s}_logits"] for k in keys}
        out[ENSEMBLE_KEY][s] = binary_metrics(members[keys[0]][f"{s}_labels"], combine(ensemble, logits, keys))
    return out


def ensemble_evaluation(models_dir: Path, members: dict) -> dict:
    """The set's ensemble on val as an evaluation for the paired comparison (`val_logits` holds its
    P(fake): the AUC needs only their order)."""
    body = json.loads((models_dir / f"{ENSEMBLE_KEY}.json").read_text())
    keys = list(members)
    return {"val_labels": members[keys[0]]["val_labels"],
            "val_logits": combine(body, {k: members[k]["val_logits"] for k in keys}, keys)}


def figures_of(models_dir: Path, cache_dir: Path, data_dir: str, cross_data: str) -> tuple[dict, dict]:
    """The set's figures, and the members' logits they came from (the paired comparison reuses them)."""
    keys = [k for k in MODEL_KEYS if (models_dir / f"{k}.json").exists()]
    members = {k: _member_logits(models_dir, k, cache_dir, data_dir, cross_data) for k in keys}
    return figures_from_logits(members, json.loads((models_dir / f"{ENSEMBLE_KEY}.json").read_text())), members


def side_by_side(before: dict, after: dict, names=FIGURES) -> str:
    """A markdown table: one row per model, `before -> after` for each set and figure."""
    def cell(a, b):
        fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
        return fmt(a) if fmt(a) == fmt(b) else f"{fmt(a)} -> {fmt(b)}"

    sets = [s for s in SETS if any(s in row for row in after.values())]
    head = [f"{s} {n}" for s in sets for n in names]
    lines = ["| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for key in after:
        cells = [cell(before.get(key, {}).get(s, {}).get(n), after[key].get(s, {}).get(n)) for s in sets for n in names]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run(cmd: list[str], log) -> None:
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    print(f"  done in {time.time() - start:.0f} s", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Measure a checkpoint against the installed models (nothing installed).")
    p.add_argument("--checkpoint", default=None, help="without one: judge the code's inference on the installed weights")
    p.add_argument("--work", required=True, help="a new folder for the copies, logs and results")
    p.add_argument("--installed", default=str(ROOT / "converted_models"))
    # Relative to the repository (every step runs there), as the manifests record the commands.
    p.add_argument("--data-dir", default="../shared/datasets/dfdc-faces", help="relative to the repository")
    p.add_argument("--cross-data", default="../shared/datasets/ffhq-stylegan2-faces")
    p.add_argument("--cache-from", default=None, help="a folder of cached evaluation logits to start from")
    p.add_argument("--installed-nudge", action="store_true", help="also measure the installed model's nudge")
    p.add_argument("--threads", type=int, default=2)
    # The install rules' sizes; smaller ones only to try the script out.
    p.add_argument("--nudge-n", type=int, default=400)
    p.add_argument("--stability-samples", type=int, default=200)
    p.add_argument("--reframing", type=int, default=40)
    a = p.parse_args(argv)
    # Every step runs in the repository, so the dataset paths the manifests record stay relative.
    for name in ("checkpoint", "work", "installed", "cache_from"):
        if getattr(a, name):
            setattr(a, name, str(Path(getattr(a, name)).resolve()))
    os.chdir(ROOT)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    installed, candidate, cache = work / "installed", work / "candidate", work / "evalcache"
    for copy in (installed, candidate):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(a.installed, copy)
    if a.cache_from:
        shutil.copytree(a.cache_from, cache, dirs_exist_ok=True)
    from training_engine import load_checkpoint

    key = json.loads(load_checkpoint(Path(a.checkpoint))["config"])["model"] if a.checkpoint else None
    py = sys.executable
    data = ["--data-dir", a.data_dir, "--cross-data", a.cross_data]
    with open(work / "judge.log", "a") as log:
        print("installed figures", flush=True)
        # Read now, logits included: the conversion below overwrites this key's cached logits.
        before, installed_members = figures_of(installed, cache, a.data_dir, a.cross_data)
        if key:
            _run([py, "convert_models.py", "--checkpoint", a.checkpoint, *data, "--out", str(candidate),
                  "--runs-dir", str(cache)], log)
            # The conversion caches the candidate's logits beside its checkpoint; the ensemble refit reads
            # them from the cache folder (it would score the candidate again otherwise).
            (cache / key).mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(a.checkpoint).parent / "eval_logits.npz", cache / key / "eval_logits.npz")
        _run([py, "convert_models.py", *data, "--ensemble", "--out", str(candidate), "--runs-dir", str(cache)], log)
        nudge = {}
        for name, folder in (("candidate", candidate),) + ((("installed", installed),) if a.installed_nudge else ()):
            out = work / f"nudge_{name}.json"
            _run([py, "scripts/experiments/nudge_sensitivity.py", "--data-dir", a.data_dir, "--split", "val",
                  "--n", str(a.nudge_n), "--threads", str(a.threads), "--models-dir", str(folder),
                  *(["--models", key] if key else []), "--json", str(out)], log)
            nudge[name] = json.loads(out.read_text())["dp"][key or ENSEMBLE_KEY]
        with open(work / "val_stability.json", "w") as out:
            print(f"$ evaluate.py --split val --stability --max-samples {a.stability_samples} "
                  f"--reframing {a.reframing}", flush=True)
            subprocess.run([py, "evaluate.py", "--data-dir", a.data_dir, "--split", "val", "--stability",
                            "--max-samples", str(a.stability_samples), "--reframing", str(a.reframing),
                            "--models-dir", str(candidate), "--json"],
                           cwd=ROOT, check=True, stdout=out, stderr=log)
        after, candidate_members = figures_of(candidate, cache, a.data_dir, a.cross_data)
        # The member rule (since session 32) reads the upper end of this paired interval; without a
        # checkpoint, the ensemble's.
        if key is None:
            paired = paired_auc_of_evaluations(*(ensemble_evaluation(folder, members) for folder, members in (
                (installed, installed_members), (candidate, candidate_members))))
        else:
            paired = (paired_auc_of_evaluations(installed_members[key], candidate_members[key])
                      if key in installed_members else None)
    stab = json.loads((work / "val_stability.json").read_text())
    result = {"checkpoint": a.checkpoint, "key": key or ENSEMBLE_KEY,
              "temperature": read_manifest(candidate / f"{key}.json")["temperature"] if key else None,
              "nudge": nudge, "paired_val_auc": paired,
              "ensemble_method": json.loads((candidate / f"{ENSEMBLE_KEY}.json").read_text())["chosen"],
              "val_recut": stab["stability"][ENSEMBLE_KEY], "val_reframing": stab["reframing"][ENSEMBLE_KEY],
              "before": before, "after": after}
    (work / "judge.json").write_text(json.dumps(result, indent=1, default=float))
    print(side_by_side(before, after))
    print(f"{result['key']}: T {result['temperature']}; nudge " + "; ".join(
        f"{n} {d['mean']} / {d['p95']} {d['p95_ci90']} / {d['max']}" for n, d in nudge.items()))
    if paired is not None:
        print(f"{result['key']}: val AUC candidate - installed {paired['difference']:+.5f}, paired 90 % interval "
              f"[{paired['ci90'][0]:+.5f}, {paired['ci90'][1]:+.5f}], not lower in "
              f"{paired['share_not_lower']:.0%} of {paired['draws']} draws")
    print(f"ensemble ({result['ensemble_method']}): val re-cut p95 {result['val_recut']['p95']} "
          f"{result['val_recut'].get('p95_ci90')}, val re-framing p95 {result['val_reframing']['p95']} "
          f"{result['val_reframing'].get('p95_ci90')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

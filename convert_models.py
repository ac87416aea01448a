"""Turn training checkpoints into installed models (GUIDE.md section 4).

    python convert_models.py --checkpoint runs/swin/best.pt --data-dir ../shared/datasets/dfdc-faces
    python convert_models.py --checkpoint runs/*/best.pt --data-dir ../shared/datasets/dfdc-faces \
        --cross-data ../shared/datasets/ffhq-stylegan2-faces --ensemble

For each checkpoint: write `<key>.safetensors` (fp16) + `<key>.json`, fit the temperature on the
validation split (with the fp16 weights that ship), and record test-split metrics, the cross-dataset
metrics and the commands that reproduce them. With --ensemble, fit each ensembling method of
`ensembling.py` on the members' calibrated validation logits, compare them on test and the
cross-dataset set, and write the chosen one with the comparison to `ensemble.json`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

import data_handler
import ensembling
from evaluate import score_face_crops
from metrics import binary_metrics
from model_store import (DEFAULT_MODELS_DIR, atomic_write_json, ensure_check_logits, load_ensemble_manifest,
                         model_from_checkpoint, read_manifest, save_converted_model, sha256_of)
from registry import ENSEMBLE_KEY, MODEL_KEYS, get_spec
from scoring import ScoringEngine, is_advisory, recorded_shifts, sigmoid, view_words

log = logging.getLogger("convert")


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the validation NLL of sigmoid(logit / T)."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.float64)

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        return ensembling.logit_nll(z, labels)

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def _samples_per_epoch(config: dict) -> int | None:
    if config.get("epoch_samples"):
        return int(config["epoch_samples"])
    words = (config.get("command") or "").split()
    if "--epoch-samples" in words:
        return int(words[words.index("--epoch-samples") + 1])
    return config.get("n_train")


def _training_device(config: dict) -> str:
    """"cuda" or "cpu": where a run trained. Checkpoints written before the engine recorded it have it
    only as `--device` in the command; without that flag they ran on this project's CPU machines."""
    if config.get("device"):
        return str(config["device"])
    words = (config.get("command") or "").split()
    return words[words.index("--device") + 1].split(":")[0] if "--device" in words[:-1] else "cpu"


def _split_paths(data_dir: str, split: str):
    records = data_handler.load_records(data_dir)
    rows = records[records["split"] == split]
    return rows["path"].tolist(), rows["label"].to_numpy()


def _eval_sets(data_dir: str, cross_data: str | None) -> list[tuple[str, str, str]]:
    """(name, dataset, split) of every set a model is scored on: val calibrates, the others report."""
    return [("val", data_dir, "val"), ("test", data_dir, "test")] + \
        ([("cross_dataset", cross_data, "test")] if cross_data else [])


def _calibration_engine(models_dir: Path, key: str) -> ScoringEngine:
    """The engine that scores `key` as the app will once it is calibrated: its test-time views follow
    the installed ensemble.json (voting members use them, advisory ones not; see ScoringEngine), and
    are the ones the registry gives it now, whatever its manifest recorded before."""
    return ScoringEngine(models_dir, keys=[key], runtime="torch", views_from="registry")


def _installed_engine(models_dir: Path, key: str) -> ScoringEngine:
    """The engine that scores `key` as the app does now: with the views its manifest records."""
    return ScoringEngine(models_dir, keys=[key], runtime="torch")


def _calibrated_logits(engine: ScoringEngine, key: str, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    logits, kept = score_face_crops(engine, paths, [key], progress=False)
    return logits[key], kept


def _tta_words(key: str, with_views: bool) -> str:
    return view_words(key) if with_views else "none"


def _tta_shifts(key: str, with_views: bool) -> list[int] | None:
    """The moves a manifest records beside `_tta_words` (scoring.recorded_shifts reads them)."""
    return list(get_spec(key).test_time_shifts) if with_views else None


def _metric_cmd(data_dir: str, split: str) -> str:
    return f"python evaluate.py --data-dir {data_dir} --split {split} --json"


def convert_checkpoint(checkpoint: str, data_dir: str, out_dir: Path, cross_data: str | None) -> dict:
    model, config, ckpt = model_from_checkpoint(checkpoint)
    key = config["model"]
    training = training_section(config, ckpt)
    # save_converted_model leaves training-only regularisers out of the manifest; the training section's
    # command keeps the full recipe.
    save_converted_model(model, key, out_dir, input_size=config["input_size"],
                         arch_args=config.get("arch_args", {}), temperature=1.0,
                         extra={"training": training})
    return calibrate_and_measure(out_dir, key, data_dir, cross_data, Path(checkpoint).parent)


def lineage(config: dict) -> dict | None:
    """What a training run started from (`--init-weights X`), with the training history behind it, so
    a manifest carries every phase's command, data, time and curves, not only the last run's.

    X is either a converted model (X.safetensors: its SHA-256, test AUC and training section are read
    from the manifest beside it, which holds its own `continued_from`) or another run's training
    checkpoint (X.pt: its training section is rebuilt from the checkpoint's config and history, and
    followed further back the same way). Read before this conversion replaces X; if X no longer holds
    the weights the run recorded (SHA-256), or is gone, only the file and its recorded SHA-256 are given."""
    path = config.get("init_weights")
    if not path:
        return None
    recorded = config.get("init_weights_sha256")
    out = {"file": str(path), "sha256": recorded}
    if str(path).endswith(".safetensors"):
        actual = recorded or (sha256_of(path) if Path(path).exists() else None)
        manifest_path = Path(path).with_suffix(".json")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return out
        if not isinstance(manifest, dict) or manifest.get("sha256") != actual:
            out["note"] = "the manifest beside this file now describes other weights"
            return out
        test = ((manifest.get("metrics") or {}).get("test") or {}).get("auc")
        return {"file": str(path), "sha256": manifest["sha256"], "test_auc": test,
                "converted_at": manifest.get("converted_at"), "training": manifest.get("training")}
    if not Path(path).exists():
        return out
    actual = sha256_of(path)
    if recorded and actual != recorded:
        out["note"] = "this file now holds other weights than the run started from"
        return out
    try:
        from training_engine import load_checkpoint   # the training side reads its own format
        ckpt = load_checkpoint(Path(path))
        earlier_config = json.loads(ckpt["config"])
    except Exception as exc:  # not one of our checkpoints: say so, keep the file and hash
        out["note"] = f"not a readable training checkpoint ({type(exc).__name__})"
        return out
    return {"file": str(path), "sha256": actual, "training": training_section(earlier_config, ckpt)}


def training_section(config: dict, ckpt: dict) -> dict:
    """A manifest's `training` section for a run: its data, time, command and per-epoch history up to
    the checkpoint, and what it continued (`lineage`)."""
    spec = get_spec(config["model"])
    history = json.loads(ckpt["history"])
    training = {
        "dataset": config.get("dataset"), "data_dir": config.get("data_dir"), "split": "train",
        "n_train": config.get("n_train"), "n_val": config.get("n_val"),
        "epochs": len(history), "samples_per_epoch": _samples_per_epoch(config), "best_epoch": int(ckpt["epoch"]) + 1,
        "train_time_s": round(float(ckpt.get("elapsed_s", 0.0)), 1),
        "device": _training_device(config),
        "best_val_auc_during_training": float(ckpt["best_auc"]),
        "pretrained_trunk": bool(config.get("pretrained")) and spec.trunk_prefix is not None,
        "sbi": config.get("sbi"), "distilled_from": config.get("teacher"), "init_weights": config.get("init_weights"),
        "command": config.get("command"), "history": history,
    }
    if "averaged_from" in ckpt:     # scripts/average_checkpoints.py: these weights are several epochs' mean
        training["averaged_from"] = json.loads(ckpt["averaged_from"])
    earlier = lineage(config)
    if earlier:
        training["continued_from"] = earlier
    return training


def calibrate_and_measure(out_dir: Path, key: str, data_dir: str, cross_data: str | None, cache_dir: Path) -> dict:
    """Fit an installed model's temperature on val (fp16 weights as shipped, test-time views as in the
    app: on for ensemble members that vote), then record val, test and cross-dataset metrics in its
    manifest; cache the calibrated logits in `cache_dir/eval_logits.npz` for the ensemble fit."""
    manifest_path = out_dir / f"{key}.json"
    ensure_check_logits(manifest_path)      # models converted before manifests had them
    engine = _calibration_engine(out_dir, key)
    old_temperature = engine.models[key].temperature
    sets = _eval_sets(data_dir, cross_data)
    raw = {}                                 # logits before any temperature, and their labels
    for name, ddir, split in sets:
        paths, labels = _split_paths(ddir, split)
        z, kept = _calibrated_logits(engine, key, paths)
        raw[name] = (z * old_temperature, labels[kept])
    temperature = fit_temperature(*raw["val"])
    manifest = read_manifest(manifest_path)
    manifest["temperature"] = round(temperature, 5)
    manifest["threshold"] = 0.5
    manifest["test_time_augmentation"] = _tta_words(key, engine.uses_tta(key))
    manifest["test_time_shifts"] = _tta_shifts(key, engine.uses_tta(key))
    cache = {name: (z / temperature, labels) for name, (z, labels) in raw.items()}
    manifest["metrics"] = metrics = _recorded_metrics(cache, sets)
    manifest["converted_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(manifest_path, manifest)
    write_eval_cache(cache_dir / "eval_logits.npz", manifest,
                     {**{f"{n}_logits": v[0] for n, v in cache.items()}, **{f"{n}_labels": v[1] for n, v in cache.items()}})
    log.info("%s: T=%.3f val AUC %.4f test AUC %.4f%s", key, temperature, metrics["val"]["auc"],
             metrics["test"]["auc"], f" cross AUC {metrics['cross_dataset']['auc']:.4f}" if cross_data else "")
    return manifest


def _recorded_metrics(cache: dict, sets: list[tuple[str, str, str]]) -> dict:
    """A manifest's `metrics`: each set's figures from its calibrated logits and labels, and for the
    sets that only report, the dataset, split and command that reproduce them."""
    metrics = {name: binary_metrics(labels, sigmoid(z)) for name, (z, labels) in cache.items()}
    for name, ddir, split in sets[1:]:
        metrics[name].update(dataset=Path(ddir).name, split=split, command=_metric_cmd(ddir, split))
    return metrics


def remeasure(out_dir: Path, key: str, data_dir: str, cross_data: str | None, runs_dir: Path) -> dict:
    """Recompute an installed model's recorded metrics from its calibrated evaluation logits (cached
    under `runs_dir/key`, or scored again when the cache does not match its weights, temperature and
    test-time views) without refitting anything: for figures added after the model was converted, such as the
    per-class ones. Its weights, temperature and `converted_at` stay as they are."""
    manifest_path = out_dir / f"{key}.json"
    logits = _member_logits(out_dir, key, runs_dir, data_dir, cross_data)
    manifest = read_manifest(manifest_path)
    sets = _eval_sets(data_dir, cross_data)
    cache = {name: (logits[f"{name}_logits"], logits[f"{name}_labels"]) for name, _, _ in sets}
    manifest["metrics"] = metrics = _recorded_metrics(cache, sets)
    atomic_write_json(manifest_path, manifest)
    log.info("%s: remeasured, val AUC %.4f test AUC %.4f", key, metrics["val"]["auc"], metrics["test"]["auc"])
    return manifest


def write_eval_cache(path: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    """Calibrated logits and labels per evaluation set, for the ensemble fit (outside git), keyed by the
    model's weights (SHA-256), temperature and test-time augmentation: `read_eval_cache` trusts them
    only while all three are what the manifest says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, sha256=manifest["sha256"], temperature=manifest["temperature"],
             tta=manifest.get("test_time_augmentation") or "", **arrays)


def read_eval_cache(path: Path, manifest: dict) -> dict | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as d:
        if str(d["sha256"]) == manifest["sha256"] and "temperature" in d.files and \
                float(d["temperature"]) == float(manifest["temperature"]) and \
                "tta" in d.files and str(d["tta"]) == (manifest.get("test_time_augmentation") or ""):
            return {k: d[k] for k in d.files}
    return None


def _member_logits(out_dir: Path, key: str, runs_dir: Path, data_dir: str, cross_data: str | None) -> dict:
    manifest = read_manifest(out_dir / f"{key}.json")
    cached = runs_dir / key / "eval_logits.npz"
    found = read_eval_cache(cached, manifest)
    if found is not None:
        return found
    out = {}
    engine = _installed_engine(out_dir, key)     # the installed views, not the registry's
    sets = _eval_sets(data_dir, cross_data)
    for name, ddir, split in sets:
        paths, labels = _split_paths(ddir, split)
        z, kept = _calibrated_logits(engine, key, paths)
        out[f"{name}_logits"], out[f"{name}_labels"] = z, labels[kept]
    # Cached, so the next refit does not score this member again (an advisory Xception takes minutes
    # on two cores).
    write_eval_cache(cached, manifest, out)
    return out


def fit_ensemble(out_dir: Path, runs_dir: Path, data_dir: str, cross_data: str | None) -> dict:
    """Fit every ensembling method on val, measure each on test (and the cross-dataset set, never
    used for fitting), ship the one `ensembling.choose` picks and record the whole comparison."""
    keys = [k for k in MODEL_KEYS if (out_dir / f"{k}.json").exists()]
    members = {k: _member_logits(out_dir, k, runs_dir, data_dir, cross_data) for k in keys}
    names = ["val", "test"] + (["cross_dataset"] if cross_data else [])
    sets = {n: ({k: members[k][f"{n}_logits"] for k in keys}, members[keys[0]][f"{n}_labels"]) for n in names}
    options = ensembling.candidates(*sets["val"])
    results = {name: ensembling.evaluate(body, sets) for name, body in options.items()}
    best = ensembling.best_members(sets)
    pick, reason = ensembling.choose(results, best)
    manifest = {"format_version": 1, "key": ENSEMBLE_KEY, "members": keys, **options[pick], "threshold": 0.5,
                "chosen": pick, "why_chosen": reason, "metrics": results[pick],
                "best_member": {n: {"key": k, "auc": round(a, 4)} for n, (k, a) in best.items()},
                "versus_best_member": ensembling.versus_best_members(options[pick], sets),
                # the same against the best of the members that vote (an advisory member can be the best
                # on the cross-dataset set while near chance in-domain: issue 11's swin)
                "versus_best_voter": ensembling.versus_best_members(
                    options[pick], sets, among=[k for k, w in options[pick]["weights"].items() if w > 0]),
                "comparison": {name: {"weights": options[name]["weights"], "bias": options[name]["bias"],
                                      **{n: {m: round(v, 4) for m, v in r.items() if m in ("auc", "ap", "eer", "accuracy")}
                                         for n, r in results[name].items()}}
                               for name in options}}
    for name in names[1:]:
        ddir = data_dir if name == "test" else cross_data
        manifest["metrics"][name].update(dataset=Path(ddir).name, split="test", command=_metric_cmd(ddir, "test"))
    atomic_write_json(out_dir / f"{ENSEMBLE_KEY}.json", manifest)
    for name in options:
        log.info("ensemble %-14s %s", name, "  ".join(f"{n} AUC {results[name][n]['auc']:.4f}" for n in names))
    log.info("chosen: %s (%s); weights %s", pick, reason, options[pick]["weights"])
    return manifest


def views_out_of_date(out_dir: Path) -> list[str]:
    """Installed models whose temperature was fitted on other test-time views than the installed
    ensemble now gives them (a member that started or stopped voting, or views that changed): they
    need recalibrating."""
    ensemble = load_ensemble_manifest(out_dir)
    stale = []
    for key in MODEL_KEYS:
        path = out_dir / f"{key}.json"
        voting = not is_advisory(ensemble, key)
        if path.exists() and recorded_shifts(read_manifest(path)) != \
                (get_spec(key).test_time_shifts if voting else None):
            stale.append(key)
    return stale


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Convert training checkpoints into installed models.")
    p.add_argument("--checkpoint", nargs="*", default=[], help="engine checkpoints (runs/<key>/best.pt)")
    p.add_argument("--data-dir", required=True, help="the training dataset (its val split calibrates, test reports)")
    p.add_argument("--cross-data", default=None, help="a second dataset for the cross-dataset check (test split)")
    p.add_argument("--out", default=str(DEFAULT_MODELS_DIR))
    p.add_argument("--runs-dir", default="runs", help="where eval logits are cached for the ensemble fit")
    p.add_argument("--ensemble", action="store_true", help="fit ensemble.json over the installed models")
    p.add_argument("--recalibrate", nargs="*", default=[], metavar="KEY",
                   help="refit the temperature of installed models on val and re-measure them (e.g. after a "
                        "change of test-time augmentation)")
    p.add_argument("--remeasure", nargs="*", default=[], metavar="KEY",
                   help="recompute installed models' recorded metrics from their evaluation logits (cached in "
                        "--runs-dir when they match the weights) without refitting the temperature")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    out_dir = Path(a.out)
    for ckpt in a.checkpoint:
        convert_checkpoint(ckpt, a.data_dir, out_dir, a.cross_data)
    for key in a.recalibrate:
        calibrate_and_measure(out_dir, get_spec(key).key, a.data_dir, a.cross_data, Path(a.runs_dir) / key)
    for key in a.remeasure:
        remeasure(out_dir, get_spec(key).key, a.data_dir, a.cross_data, Path(a.runs_dir))
    if a.ensemble:
        fit_ensemble(out_dir, Path(a.runs_dir), a.data_dir, a.cross_data)
        # Voting decides the test-time views and the views the temperature: members whose vote (or
        # views) changed are recalibrated and the ensemble refitted on their new logits (once: the
        # quality floor is a val AUC, which the views move by thousandths).
        stale = views_out_of_date(out_dir)
        if stale:
            log.info("test-time views changed for %s: recalibrating with the matching views", ", ".join(stale))
            for key in stale:
                calibrate_and_measure(out_dir, key, a.data_dir, a.cross_data, Path(a.runs_dir) / key)
            fit_ensemble(out_dir, Path(a.runs_dir), a.data_dir, a.cross_data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

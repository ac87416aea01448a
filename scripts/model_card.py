"""Print the README's model-card tables from the manifests in converted_models/ (no figure is typed by hand).

    .venv/bin/python scripts/model_card.py
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from registry import ENSEMBLE_KEY, MODEL_KEYS, get_spec  # noqa: E402


# evaluate.py records the engine's test-time-view policy (scoring.TTA_POLICIES).
TTA_WORDS = {"all": "on every model", "none": "off", "voters": "on the ensemble's voting members"}


def started_from(training: dict) -> str | None:
    """The weights a training run started from (`--init-weights`); older manifests only have it in
    the recorded command."""
    if training.get("init_weights"):
        return training["init_weights"]
    found = re.search(r"--init-weights[= ](\S+)", training.get("command") or "")
    return found.group(1) if found else None


def phases(training: dict) -> list[dict]:
    """This run's training section and those of the converted models it continued, newest first
    (`training.continued_from`, written by convert_models.lineage)."""
    out = []
    while isinstance(training, dict):
        out.append(training)
        training = (training.get("continued_from") or {}).get("training")
    return out


def minutes_on(runs: list[dict]) -> str:
    """Training minutes per kind of machine, e.g. "64 min CPU" or "187 min CPU + 6 min GPU": a GPU
    minute is worth hundreds of CPU minutes here, so the two are never added up. Manifests written
    before `device` was recorded trained on this project's CPUs."""
    totals: dict[str, float] = {}
    for run in runs:
        kind = "GPU" if str(run.get("device", "cpu")).startswith("cuda") else "CPU"
        totals[kind] = totals.get(kind, 0.0) + run.get("train_time_s", 0) / 60
    return " + ".join(f"{totals[kind]:.0f} min {kind}" for kind in ("CPU", "GPU") if kind in totals)


def fmt(v, nd=3):
    return "n/a" if v is None else f"{v:.{nd}f}"


def p95_cell(summary: dict) -> str:
    """A 95th percentile, with its bootstrap interval where the stability file has one."""
    ci = summary.get("p95_ci90")
    return fmt(summary["p95"]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def false_positive_rows(models_dir) -> list[str]:
    """A table of what a ranking metric hides: how often each model calls a real face fake at its
    threshold, with the real faces' mean P(fake) in brackets, on DFDC test and on FFHQ's real photos
    (manifests written before these figures were recorded are left out)."""
    rows = []
    for key in (*MODEL_KEYS, ENSEMBLE_KEY):
        path = Path(models_dir) / f"{key}.json"
        metrics = json.loads(path.read_text()).get("metrics", {}) if path.exists() else {}
        cells = [f"{metrics[n]['fpr'] * 100:.1f} % ({metrics[n]['real_mean_p']:.3f})"
                 if "fpr" in metrics.get(n, {}) else "n/a" for n in ("test", "cross_dataset")]
        if cells != ["n/a", "n/a"]:
            rows.append(f"| `{key}` | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", "Real faces called fake: the share of real faces at or above the threshold (0.5), and in brackets "
            "their mean P(fake), from the same scores as the AUCs above (FFHQ/StyleGAN2's real faces are FFHQ "
            "photographs, a kind of picture no model trained on):", "",
            "| model | DFDC test | FFHQ real photos |", "|---|---|---|"] + rows


def starting_point(manifest: dict) -> str:
    """Where a manifest's last run started: earlier weights, ImageNet weights (all of a pretrained trunk,
    or only a stem, as Swin's stem=mobilenet_v2) or nothing."""
    tr = manifest.get("training", {})
    if started_from(tr):
        return "continued from earlier weights"
    if not tr.get("pretrained_trunk"):
        return "from scratch"
    stem = manifest.get("architecture", {}).get("args", {}).get("stem", "patch")
    return "from ImageNet weights" if stem == "patch" else f"from ImageNet weights in a {stem} stem, the rest from scratch"


def main(models_dir=ROOT / "converted_models") -> str:
    rows = ["| model | architecture | input | params | trained | test AUC | test AP | test EER | test acc | "
            "FFHQ/StyleGAN2 AUC | AP | EER |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in MODEL_KEYS:
        path = Path(models_dir) / f"{key}.json"
        if not path.exists():
            rows.append(f"| `{key}` | {get_spec(key).title} | - | - | not shipped | | | | | | | |")
            continue
        m = json.loads(path.read_text())
        t, c = m["metrics"]["test"], m["metrics"].get("cross_dataset", {})
        tr = m.get("training", {})
        how = (f"{minutes_on([tr])}, {tr.get('epochs')} x {starting_point(m)}"
               f"{', distilled' if tr.get('distilled_from') else ''}")
        earlier = phases(tr)
        if len(earlier) > 1:   # the manifest records the runs it continued: say what they add up to
            how += f" ({minutes_on(earlier)} over the {len(earlier)} recorded runs)"
        rows.append(f"| `{key}` | {m['title']} | {m['input_size']} | {m['num_parameters'] / 1e6:.1f} M | {how} | "
                    f"{fmt(t['auc'])} | {fmt(t['ap'])} | {fmt(t['eer'])} | {fmt(t['accuracy'])} | "
                    f"{fmt(c.get('auc'))} | {fmt(c.get('ap'))} | {fmt(c.get('eer'))} |")
    false_positives = false_positive_rows(models_dir)   # after the ensemble's row, before the methods
    ens = Path(models_dir) / f"{ENSEMBLE_KEY}.json"
    if ens.exists():
        e = json.loads(ens.read_text())
        t, c = e["metrics"]["test"], e["metrics"].get("cross_dataset", {})
        w = ", ".join(f"{k} {v:.2f}" for k, v in e["weights"].items() if v > 0)
        rows.append(f"| `ensemble` | {e.get('chosen', 'logistic')} ({w}) | - | - | chosen on val | {fmt(t['auc'])} | "
                    f"{fmt(t['ap'])} | {fmt(t['eer'])} | {fmt(t['accuracy'])} | {fmt(c.get('auc'))} | "
                    f"{fmt(c.get('ap'))} | {fmt(c.get('eer'))} |")
        rows += false_positives
        false_positives = []
        if e.get("comparison"):
            rows += ["", f"Ensembling methods, all fitted on `val` (chosen: **{e['chosen']}**, {e.get('why_chosen', '')}; "
                     "best member: " + ", ".join(f"{n} `{b['key']}` {b['auc']:.3f}" for n, b in e.get("best_member", {}).items())
                     + "):", "",
                     "| method | weights | val AUC | test AUC | FFHQ/StyleGAN2 AUC |", "|---|---|---|---|---|"]
            for name, r in e["comparison"].items():
                w = ", ".join(f"{k} {v:.2f}" for k, v in r["weights"].items() if v > 0)
                rows.append(f"| {name} | {w} | {fmt(r['val']['auc'])} | {fmt(r['test']['auc'])} | "
                            f"{fmt(r.get('cross_dataset', {}).get('auc'))} |")
            if e.get("versus_best_member"):
                def gaps(by_set: dict) -> str:
                    names = {"cross_dataset": "FFHQ/StyleGAN2"}
                    return "; ".join(f"{names.get(n, n)} {v['difference']:+.4f} [{v['ci90'][0]:+.4f}, "
                                     f"{v['ci90'][1]:+.4f}] against `{v['best_member']}`" for n, v in by_set.items())

                rows += ["", "The chosen ensemble's AUC minus its best member's, on the same faces (in brackets the "
                         "paired 90 % bootstrap interval; an interval that holds 0 is a gap within the faces' noise; "
                         "`convert_models.py --ensemble` records them in `ensemble.json`): "
                         + gaps(e["versus_best_member"]) + "."]
                voters = {n: v for n, v in e.get("versus_best_voter", {}).items()
                          if v["best_member"] != e["versus_best_member"].get(n, {}).get("best_member")}
                if voters:
                    rows[-1] += " Against the best member that votes: " + gaps(voters) + "."
    rows += false_positives
    stability = ROOT / "docs" / "stability.json"
    if stability.exists():
        s = json.loads(stability.read_text())
        rows += ["", f"Score stability ({s.get('command', 'evaluate.py --stability')}; test-time views "
                 f"{TTA_WORDS.get(s.get('test_time_views'), s.get('test_time_views'))}): |dP(fake)| between a test crop and the same crop "
                 "re-cut (centre +-5 %, side +-5 %), resized with the other filter, or re-saved as JPEG 75 off its 8x8 grid"
                 + (f"; re-framing: spread of P(fake) over {s['reframing']['faces']} crops placed on a canvas four ways "
                    "and analysed through face finding" if "reframing" in s else "") + ":", "",
                 "| model | mean | 95th pct | max |" + (" re-framing mean | 95th pct | max |" if "reframing" in s else ""),
                 "|---|---|---|---|" + ("---|---|---|" if "reframing" in s else "")]
        for k, m in s.get("stability", {}).items():
            rf = s.get("reframing", {}).get(k)
            rows.append(f"| `{k}` | {fmt(m['mean'])} | {p95_cell(m)} | {fmt(m['max'])} |"
                        + (f" {fmt(rf['mean'])} | {p95_cell(rf)} | {fmt(rf['max'])} |" if rf else ""))
        if any("p95_ci90" in m for m in s.get("stability", {}).values()):
            rows += ["", "(In brackets: a 90 % bootstrap interval of the 95th percentile, faces resampled; "
                     "on 40 faces it is about the second-largest spread, so the interval is wide.)"]
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())

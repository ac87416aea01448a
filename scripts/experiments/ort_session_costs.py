"""What an engine start and its memory cost in ONNX Runtime, per choice (docs/performance.md, session 4).

    .venv/bin/python scripts/experiments/ort_session_costs.py [--models-dir converted_models]

Exports each installed model once (as fast_runtime does), then measures on this machine:
1. CPU seconds to create the five sessions (one thread, best of 3) from the raw export at level ALL,
   from the EXTENDED pre-optimised graph at level ALL (what the cache holds), and from an ALL-level
   graph loaded with optimisations off (CPU-specific: not cached);
2. wall seconds to create the five pre-optimised sessions one after the other and on two threads;
3. RSS added by the five sessions and after three batches of 8, and the runs' CPU seconds, with ONNX
   Runtime's weight pre-packing on (default) and off, each in a fresh process;
4. RSS of `import torch` and its largest mappings (/proc/self/smaps).
Run it on an idle machine: the wall-clock figures are worthless otherwise.
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MEMORY_CHILD = """
import json, sys, time, numpy as np, onnxruntime as ort
def rss():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) / 1024
paths, prepack = json.loads(sys.argv[1]), sys.argv[2] == 'on'
base = rss(); sessions = []
for p in paths:
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
    if not prepack:
        so.add_session_config_entry('session.disable_prepacking', '1')
    sessions.append(ort.InferenceSession(p, so, providers=['CPUExecutionProvider']))
made = rss() - base
x = np.random.default_rng(0).standard_normal((8, 3, 128, 128)).astype(np.float32)
t = time.process_time()
for s in sessions:
    for _ in range(3):
        s.run(None, {s.get_inputs()[0].name: x})
print(json.dumps({'sessions_mb': round(made), 'after_runs_mb': round(rss() - base),
                  'runs_cpu_s': round(time.process_time() - t, 2)}))
"""

TORCH_CHILD = """
import collections, json
import torch
rss = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) // 1024
by_map, name = collections.Counter(), None
for line in open('/proc/self/smaps'):
    parts = line.split()
    if parts and '-' in parts[0] and not parts[0].endswith(':'):
        name = parts[5].rsplit('/', 1)[-1] if len(parts) > 5 else '[anon]'
    elif line.startswith('Rss:'):
        by_map[name] += int(parts[1]) // 1024
print(json.dumps({'rss_mb': rss, 'largest_mb': dict(by_map.most_common(8))}))
"""


def session(path_or_bytes, level, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def cpu_best_of(fn, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def main(argv=None) -> int:
    import onnxruntime as ort

    from fast_runtime import _export_bytes, _preoptimised
    from model_store import discover_manifests, load_converted_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", default=str(ROOT / "converted_models"))
    a = p.parse_args(argv)
    level = ort.GraphOptimizationLevel
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="ort-costs-") as tmp:
        files = collections.defaultdict(dict)
        for key, manifest in discover_manifests(a.models_dir).items():
            loaded = load_converted_model(manifest)
            raw, _ = _export_bytes(loaded.model, loaded.input_size)
            files[key]["raw"] = Path(tmp) / f"{key}.raw.onnx"
            files[key]["raw"].write_bytes(raw)
            files[key]["extended"] = Path(tmp) / f"{key}.extended.onnx"
            files[key]["extended"].write_bytes(_preoptimised(raw))
            files[key]["all"] = Path(tmp) / f"{key}.all.onnx"
            so = ort.SessionOptions()
            so.graph_optimization_level = level.ORT_ENABLE_ALL
            so.optimized_model_filepath = str(files[key]["all"])
            ort.InferenceSession(raw, so, providers=["CPUExecutionProvider"])
        creation = {}
        for name, kind, lvl in (("raw export, level ALL", "raw", level.ORT_ENABLE_ALL),
                                ("EXTENDED pre-optimised, level ALL (cached)", "extended", level.ORT_ENABLE_ALL),
                                ("ALL pre-optimised, optimisation off", "all", level.ORT_DISABLE_ALL)):
            per_model = {k: round(cpu_best_of(lambda f=f: session(str(f[kind]), lvl)), 3) for k, f in files.items()}
            creation[name] = {"total_cpu_s": round(sum(per_model.values()), 3), **per_model}
        out["session_creation_cpu_s"] = creation

        paths = [str(f["extended"]) for f in files.values()]
        make = lambda path: session(path, level.ORT_ENABLE_ALL, threads=2)  # noqa: E731
        t = time.perf_counter()
        [make(path) for path in paths]
        sequential = time.perf_counter() - t
        t = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(make, paths))
        out["five_sessions_wall_s"] = {"sequential": round(sequential, 3),
                                       "two_threads": round(time.perf_counter() - t, 3)}

        out["prepacking"] = {
            mode: json.loads(subprocess.run([sys.executable, "-c", MEMORY_CHILD, json.dumps(paths), mode],
                                            check=True, capture_output=True, text=True).stdout)
            for mode in ("on", "off")}
    out["import_torch"] = json.loads(subprocess.run([sys.executable, "-c", TORCH_CHILD], check=True,
                                                    capture_output=True, text=True).stdout)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

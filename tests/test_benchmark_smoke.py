"""`benchmark.py --quick` end to end on the suite's random 64 px models (part of `make test`, marked slow).

It runs the real benchmark (ours and the naive baseline, cold start and peak-RSS subprocesses) on a
3-second video with 10 frames and checks the JSON: every figure present and plausible, and the
agreement check between ours and the naive pipeline passed. The ONNX cache is the suite's
(DFSTUDIO_ONNX_CACHE from conftest), so the models exported by other tests are reused.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ["image_s", "image_cpu_s", "naive_image_s", "image_speedup", "video_s", "video_cpu_s", "naive_video_s",
           "video_speedup", "video_speedup_cpu", "cold_start_s", "peak_rss_mb", "cli_video_s", "cli_peak_rss_mb"]

pytestmark = pytest.mark.slow   # `make test-fast` leaves it out


def test_quick_benchmark(random_models_dir, tmp_path):
    out = tmp_path / "benchmark.json"
    cmd = [sys.executable, str(ROOT / "benchmark.py"), "--quick", "--models-dir", str(random_models_dir),
           "--out", str(out), "--media-dir", str(tmp_path / "media")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    figures = result["figures"]
    for name in FIGURES:
        assert isinstance(figures.get(name), (int, float)) and figures[name] > 0, (name, figures.get(name))
    assert result["mode"] == "quick" and result["workloads"]["frames_analysed"] == 10
    assert result["agreement"]["passed"] is True
    for kind in ("image", "video"):
        agreement = result["agreement"][kind]
        assert agreement["passed"] and agreement["faces_ok"] and agreement["result_ok"]
        assert agreement["faces_ours"] == agreement["faces_naive"] > 0 and not agreement["frames_with_count_mismatch"]
        # The fast path scores the naive's own crops like the naive does (ONNX vs eager torch).
        assert agreement["scoring_path"]["passed"] and agreement["scoring_path"]["max_model_p_diff"] <= 2e-3
        assert abs(agreement["mean_face_p_diff"]) <= agreement["bound"]
    assert set(result["runtimes"].values()) == {"onnx"}
    assert set(result["targets"]) >= {"video_s", "video_speedup", "image_s", "cold_start_s", "peak_rss_mb"}
    assert "cold start" in proc.stdout and "naive/ours" in proc.stdout

"""make bench-gpu at its reduced CPU size: one JSON line of positive, finite figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_reduced_benchmark_prints_its_figures():
    done = subprocess.run([sys.executable, "experiments/bench_gpu.py", "--reduced",
                           "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["reduced"] and summary["peak_tflops"] is None  # no peak on a CPU
    assert list(summary["stages"]) == ["head", "+layer4", "+layer3", "all"]
    assert list(summary["all_stage_variants"]) == ["shipped", "channels_last_off", "fused_off"]
    figures = [*summary["stages"].values(), *summary["all_stage_variants"].values()]
    for figure in figures:
        assert figure["percent_of_peak"] is None
        for key in ("img_per_s", "tflops", "peak_memory_mb"):
            assert math.isfinite(figure[key]) and figure[key] > 0, (key, figure)
        assert 0 <= figure["data_wait_fraction"] < 1
    assert {key.rsplit("_", 1)[0] for key in summary["predict_img_per_s"]} == {
        "png_workers", "dicom_workers"}
    assert all(math.isfinite(v) and v > 0 for v in summary["predict_img_per_s"].values())

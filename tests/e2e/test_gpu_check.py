"""make gpu-check: its verdict on a CPU, and the logic of its checks on hand-made inputs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers.rank_probe import rank_differences

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "experiments" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU verdict")
def test_on_a_cpu_it_says_it_needs_a_gpu_and_exits_0():
    done = subprocess.run(["make", "-s", "gpu-check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line == {"device": "cpu", "passed": None, "verdict": "needs a GPU", "checks": {}}


def test_bf16_valued_finds_the_probabilities_bf16_rounded():
    # main's multilabel probabilities under bf16-mixed (the issue), and float32 ones
    tied = [0.53125, 0.353515625, 0.8984375, 1.0]
    float32 = [float(torch.tensor(v, dtype=torch.float32)) for v in (0.1, 0.53126, 0.99912)]
    assert gpu_check.bf16_valued(tied + float32) == tied


def test_a_failing_check_fails_the_verdict_and_the_others_still_run():
    def broken() -> dict:
        raise gpu_check.CheckFailedError("3 of 40 probabilities are bf16 values")

    results = gpu_check.run_checks({"first": lambda: {"n": 1}, "broken": broken,
                                    "last": dict})
    line = gpu_check.verdict(results, "NVIDIA H100")
    assert line["passed"] is False
    assert [line["checks"][k]["passed"] for k in ("first", "broken", "last")] == [
        True, False, True]
    assert line["checks"]["first"]["n"] == 1
    assert "3 of 40" in line["checks"]["broken"]["error"]
    assert gpu_check.verdict({"first": results["first"]}, "x")["passed"] is True


def _probe(directory: Path, rank: int, sums: dict[str, float]) -> None:
    (directory / f"rank{rank}_edema_epoch0.json").write_text(json.dumps(
        {"world_size": 2, "sums": sums, "trainable": ["head", "layer4.1"]}))


def test_rank_differences_names_the_blocks_that_differ(tmp_path):
    _probe(tmp_path, 0, {"head": 1.5, "layer4.1": 958.54, "layer4.0": 3.0})
    _probe(tmp_path, 1, {"head": 1.5, "layer4.1": 968.10, "layer4.0": 3.0})
    assert rank_differences(tmp_path) == (1, {"rank1_edema_epoch0": ["layer4.1"]})
    _probe(tmp_path, 1, {"head": 1.5, "layer4.1": 958.54, "layer4.0": 3.0})
    assert rank_differences(tmp_path) == (1, {})
    (tmp_path / "rank1_edema_epoch0.json").unlink()
    assert rank_differences(tmp_path) == (1, {"rank1_edema_epoch0": ["missing"]})

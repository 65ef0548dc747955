"""Every CUDA-only branch in one go: ``make gpu-check`` prints one JSON verdict line.

    python experiments/gpu_check.py [--out DIR] [--keep]

On a CUDA machine it runs, on the embedded sample at 64 px through the real commands:

* ``gpu_tests``: every ``gpu``-marked test (``pytest -m gpu``);
* ``bf16``: each formulation trained (two settings, four batches each) and predicted under
  ``bf16-mixed``; every probability in results.json must be float32-valued, not bf16;
* ``fused_adamw``: the multiclass job's last checkpoint holds a fused AdamW with one param group
  per unfrozen block and a scheduler entry for each;
* ``heatmaps``: ``cxr-predict --heatmaps --device cuda`` on that job's model.pt;
* ``compile``: ``trainer.compile=true`` (Inductor) over the four settings of a ResNet-50 with
  Dynamo's recompile limit made an error;
* ``resume``: a run killed mid-epoch (SIGKILL) and resumed with ``resume=true``;
* ``ddp``: ``torchrun --nproc_per_node=2`` under ``trainer=ddp``, every rank's blocks compared at
  every epoch's end (``tests/helpers/rank_probe.py``), when two GPUs are visible.

The line holds ``passed`` and, per check, ``passed``, ``seconds`` and its figures (or its
``error``). It exits 1 when a check fails. Without CUDA it prints ``"verdict": "needs a GPU"``
and exits 0. About 5 minutes on one H100.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HELPERS = PROJECT_ROOT / "tests" / "helpers"
log = logging.getLogger("gpu_check")

COMMON = ["data.sample.n_subjects=60", "data.image_size=64", "unfreeze.interval=1",
          "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2", "logger=csv",
          "evaluation.n_bootstrap=50"]
"""Every training run's overrides: a few batches per setting, one epoch per setting."""

COMPILE_WITH_RECOMPILE_ERRORS = (
    "import sys, torch._dynamo; torch._dynamo.config.fail_on_recompile_limit_hit = True; "
    "from cxr_lightning.train import main; sys.argv[0] = 'cxr-train'; main()")


class CheckFailedError(Exception):
    """A check ran and found something wrong."""


def bf16_valued(values: Iterable[float]) -> list[float]:
    """The values that are exactly representable in bfloat16 (a float32 probability almost
    never is: 16 mantissa bits would have to be zero)."""
    values = torch.tensor(list(values), dtype=torch.float64)
    return values[values == values.to(torch.bfloat16).double()].tolist()


def verdict(results: dict[str, dict[str, Any]], device: str) -> dict[str, Any]:
    """The JSON line: every check's result and whether all passed."""
    return {"device": device, "passed": all(r["passed"] for r in results.values()),
            "checks": results}


def run_checks(checks: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Run each check in order; a raised exception fails it (its message recorded)."""
    results = {}
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            figures, passed = check(), True
        except Exception as error:  # a check's failure is recorded, the others still run
            figures, passed = {"error": f"{type(error).__name__}: {error}"[-2000:]}, False
        results[name] = {"passed": passed, "seconds": round(time.perf_counter() - started, 1),
                         **figures}
        log.info("%s: %s", name, "passed" if passed else f"FAILED {figures['error']}")
    return results


def _run(command: list[str], env: dict[str, str] | None = None) -> None:
    """Run a command from the project root; its output's tail in the error when it fails."""
    env = {**os.environ, "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HELPERS),
                                                       os.environ.get("PYTHONPATH")])),
           **(env or {})}
    log.info("Running: %s", " ".join(command))
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise CheckFailedError(f"exit {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")


def _train(out: Path, *overrides: str, prefix: list[str] | None = None) -> None:
    """A training run under ``out`` (one check's folder), on the sample every check shares."""
    _run([*(prefix or [sys.executable, "-m", "cxr_lightning.train"]), *COMMON,
          f"paths.root_dir={out}", f"paths.data_dir={out.parent / 'data'}", *overrides])


def gpu_tests() -> dict[str, Any]:
    _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"])
    return {}


def bf16(out: Path) -> dict[str, Any]:
    _train(out / "bf16", "-m", "formulation=binary,multilabel,multiclass",
           "trainer.precision=bf16-mixed", "model/scheduler=cosine", "unfreeze.max_blocks=1")
    probabilities = []
    for results in (out / "bf16" / "outputs" / "multiruns").glob("*/*/results.json"):
        predictions = json.loads(results.read_text())["predictions"]
        probabilities += [v for p in predictions for k, v in p.items() if k.endswith("_prob")]
    tied = bf16_valued(probabilities)
    if not probabilities or tied:
        raise CheckFailedError(f"{len(tied)} of {len(probabilities)} probabilities are bf16 values")
    return {"probabilities": len(probabilities)}


def _job(out: Path, formulation: str) -> Path:
    (job,) = [r.parent for r in (out / "bf16" / "outputs" / "multiruns").glob("*/*/results.json")
              if json.loads(r.read_text())["formulation"] == formulation]
    return job


def fused_adamw(out: Path) -> dict[str, Any]:
    (checkpoint,) = (_job(out, "multiclass") / "checkpoints").glob("*/last.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    groups = state["optimizer_states"][0]["param_groups"]
    scheduler = state["lr_schedulers"][0]
    if not all(g.get("fused") for g in groups):
        raise CheckFailedError(f"AdamW not fused: {[g.get('fused') for g in groups]}")
    if len(groups) != 2 or len(scheduler["base_lrs"]) != len(groups):
        raise CheckFailedError(f"{len(groups)} param groups, {len(scheduler['base_lrs'])} "
                          "scheduler entries; expected the head's and layer4.1's")
    return {"param_groups": len(groups), "lrs": [g["lr"] for g in groups]}


def heatmaps(out: Path) -> dict[str, Any]:
    job = _job(out, "multiclass")
    images = sorted((out / "data").rglob("*.dcm"))[:4]
    predictions = out / "predictions"
    _run([sys.executable, "-m", "cxr_lightning.predict", "--ckpt", str(job / "model.pt"),
          "--inputs", *map(str, images), "--out", str(predictions), "--heatmaps",
          "--device", "cuda"])
    overlays = list((predictions / "heatmaps").rglob("*.png"))
    if not overlays:
        raise CheckFailedError("no heatmap written")
    return {"images": len(images), "heatmaps": len(overlays)}


def compile_settings(out: Path) -> dict[str, Any]:
    _train(out / "compile", "formulation=multiclass", "model=resnet50", "model.weights=none",
           "trainer.compile=true", "unfreeze.until=layer4.0",
           prefix=[sys.executable, "-c", COMPILE_WITH_RECOMPILE_ERRORS])
    return {"settings": 4}


def resume(out: Path) -> dict[str, Any]:
    run = out / "resume" / "run"
    arguments = ["formulation=multilabel", "unfreeze.max_blocks=1", "trainer.max_epochs=2",
                 f"hydra.run.dir={run}"]
    with contextlib.suppress(CheckFailedError):  # killed, as planned
        _train(out / "resume", *arguments, "+callbacks.kill._target_=kill_switch.KillAtStep",
               "+callbacks.kill.step=6")
    _train(out / "resume", *arguments, "resume=true")
    if not (run / "results.json").is_file():
        raise CheckFailedError("the resumed run wrote no results.json")
    return {}


def ddp(out: Path) -> dict[str, Any]:
    if torch.cuda.device_count() < 2:
        return {"skipped": "fewer than two GPUs visible"}
    probes = out / "ddp" / "probes"
    probes.mkdir(parents=True)
    _train(out / "ddp", "formulation=multilabel", "trainer=ddp", "trainer.devices=2",
           "+callbacks.probe._target_=rank_probe.RankProbe", f"+callbacks.probe.out={probes}",
           prefix=["torchrun", "--nproc_per_node=2", "-m", "cxr_lightning.train"])
    from rank_probe import rank_differences  # tests/helpers, on sys.path in main()

    compared, different = rank_differences(probes)
    if not compared or different:
        raise CheckFailedError(f"{compared} epochs compared; differing blocks: {different}")
    return {"epochs_compared": compared}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python experiments/gpu_check.py",
                                     description="Run every CUDA-only branch; one JSON line.")
    parser.add_argument("--out", type=Path, default=None,
                        help="working directory (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep --out afterwards")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not torch.cuda.is_available():
        sys.stdout.write(json.dumps({"device": "cpu", "passed": None,
                                     "verdict": "needs a GPU", "checks": {}}) + "\n")
        return
    sys.path.insert(0, str(HELPERS))
    out = args.out or Path(tempfile.mkdtemp(prefix="cxr-gpu-check-"))
    try:
        results = run_checks({
            "gpu_tests": gpu_tests,
            "bf16": lambda: bf16(out),
            "fused_adamw": lambda: fused_adamw(out),
            "heatmaps": lambda: heatmaps(out),
            "compile": lambda: compile_settings(out),
            "resume": lambda: resume(out),
            "ddp": lambda: ddp(out),
        })
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    line = verdict(results, torch.cuda.get_device_name())
    sys.stdout.write(json.dumps(line) + "\n")
    sys.exit(0 if line["passed"] else 1)


if __name__ == "__main__":
    main()

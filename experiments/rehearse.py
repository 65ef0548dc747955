"""A rehearsal of the whole study: the paper configuration through the real CLI, measured and
projected to MIMIC-CXR.

    python experiments/rehearse.py [--device auto|cpu|cuda] [--out DIR] [--keep]
    make rehearse

1. Generates a MIMIC-CXR-format sample in PhysioNet's two-project layout and points
   ``data.root`` at its DICOM project, as a user points it at a download.
2. Writes full-size (2500 x 2000, 12-bit) synthetic DICOMs and times the 512 px cache build on
   them in one process; the cache's build rate is that times ``data.cache_workers`` (one core
   each). The sample's own DICOMs are ~500 px, too small to stand for MIMIC's.
3. Runs ``python -m cxr_lightning.train -m formulation=binary,multilabel,multiclass`` with the
   paper configuration (ResNet152, 512 px, batch 16, its unfreezing settings, bf16 on a GPU that
   has it), except: no pretrained weights (none can be downloaded here) and a reduced epoch
   budget, ``unfreeze.interval=1`` (each setting one epoch: the four settings of every model are
   each measured once), plus ``--cpu-overrides`` on a CPU.
4. Prints one JSON line: cache build img/s, training img/s per setting, validation img/s, the
   fraction of training time spent waiting for data, peak GPU memory, and the projected wall
   time and disk of the full study (33,703 images split 80/10/10; four models, 40 epochs each
   at worst; the 512 px cache; checkpoints as the rehearsal wrote them). Training runs on the
   frozen prefix's cached activations (``unfreeze.cache_frozen``, the default): its settings'
   rates are those, and the projection adds one build of each boundary's activation cache at
   the rate the rehearsal built it (ImageNet weights: every model, formulation and seed of the
   study shares them).

On a CPU it runs at a reduced size: the multiclass formulation alone, 60 subjects, and
``CPU_OVERRIDES`` (batch 2, two training batches and one validation batch per epoch); its rates
are real, its projection is that of training on that CPU, i.e. only a check that the path works.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
from bench_data import preprocessing_rate, write_inputs

from cxr_lightning.data.cache import CacheSpec
from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.data.sample import generate_sample

log = logging.getLogger("rehearse")

STUDY_IMAGES = 33_703
SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}
SETTINGS, EPOCHS_PER_SETTING = 4, 10
MODELS = 4  # binary: two; multilabel, multiclass: one each
ALL_FORMULATIONS = "binary,multilabel,multiclass"
IMAGE_SIZE = 512
CPU_OVERRIDES = ["data.batch_size=2", "+trainer.limit_train_batches=2",
                 "+trainer.limit_val_batches=1", "data.num_workers=0", "data.cache_workers=2"]
"""What a CPU run changes beyond the rehearsal's own overrides: a few batches of two images."""


def run_study(out: Path, root: Path, device: str, formulations: str,
              extra: list[str]) -> tuple[Path, float]:
    """The formulations through the real CLI; returns the sweep directory and wall time."""
    command = [sys.executable, "-m", "cxr_lightning.train", "-m",
               f"formulation={formulations}", f"data.root={root}",
               f"paths.root_dir={out}", "model.weights=none", "unfreeze.interval=1",
               "logger=csv", "evaluation.n_bootstrap=200", *extra]
    if device == "cpu" and torch.cuda.is_available():
        command += ["trainer.accelerator=cpu", "trainer.precision=32-true"]
    log.info("Running: %s", " ".join(command))
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "WANDB_MODE": "disabled"})
    elapsed = time.perf_counter() - started
    (sweep,) = (out / "outputs" / "multiruns").iterdir()
    return sweep, elapsed


def cache_rate_per_core(n_images: int) -> float:
    """Full-size DICOMs cached at 512 px per second by one process (the build's workers each
    do this; a pool of W workers on W free cores builds about W times as fast)."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        manifest = write_inputs(scratch, n_images, 0)["uncompressed"]
        wall_rate, _ = preprocessing_rate(manifest, scratch, scratch / "cache",
                                          CacheSpec(Preprocessing(IMAGE_SIZE)))
        return wall_rate


def summarise(sweep: Path) -> dict:
    """Per-setting training rates, validation rate, data wait and peak memory over every model."""
    members = [member for path in sorted(sweep.glob("*/results.json"))
               for member in json.loads(path.read_text())["members"]]
    records = [record for member in members for record in member["throughput"]]
    per_stage = {}
    for stage in sorted({r["stage"] for r in records}):
        rates = [r["train_img_s"] for r in records if r["stage"] == stage and r["train_img_s"]]
        per_stage[stage] = median(rates)
    trained = sum(r["train_s"] for r in records)
    peaks = [r["peak_memory_gb"] for r in records if r["peak_memory_gb"] is not None]
    checkpoints = [p.stat().st_size for p in sweep.rglob("*.ckpt")] + [
        p.stat().st_size for p in sweep.rglob("model.pt")]
    return {
        "models": len(members),
        "precision": members[0]["precision"], "device": members[0]["device"],
        "train_img_s_per_setting": per_stage,
        "val_img_s": median(r["val_img_s"] for r in records if r["val_img_s"]),
        "data_wait_fraction": sum(r["data_wait_s"] for r in records) / trained,
        "peak_gpu_memory_gb": max(peaks) if peaks else None,
        "model_bytes": sum(checkpoints) / len(members),  # checkpoints and model.pt per model
        "activation_cache_img_s": activation_cache_rates(sweep),
    }


def activation_cache_rates(sweep: Path) -> dict[str, float]:
    """img/s of the activation-cache builds the jobs logged (PrefixCache), by boundary."""
    pattern = re.compile(r"Activation cache at (\S+): built in [\d.]+ s \(([\d.]+) img/s\)")
    rates: dict[str, list[float]] = {}
    for job_log in sweep.glob("*/train.log"):
        for boundary, rate in pattern.findall(job_log.read_text()):
            rates.setdefault(boundary, []).append(float(rate))
    return {boundary: median(values) for boundary, values in rates.items()}


def project(summary: dict, cache_img_s: float) -> dict:
    """Wall time and disk of the full study at the measured rates."""
    n = {split: STUDY_IMAGES * share for split, share in SPLIT.items()}
    rates = list(summary["train_img_s_per_setting"].values())
    epoch_s = [n["train"] / rate + n["val"] / summary["val_img_s"] for rate in rates]
    per_model_s = EPOCHS_PER_SETTING * sum(epoch_s) + (n["test"] + n["val"]) / summary[
        "val_img_s"]
    cache_s = STUDY_IMAGES / cache_img_s
    cache_gb = STUDY_IMAGES * IMAGE_SIZE**2 / 1e9
    activations_s = sum((n["train"] + n["val"]) / rate
                        for rate in summary["activation_cache_img_s"].values())
    return {
        "cache_build_h": cache_s / 3600,
        "activation_cache_build_h": activations_s / 3600,
        "train_h_worst_case": MODELS * per_model_s / 3600,
        "total_h_worst_case": (cache_s + activations_s + MODELS * per_model_s) / 3600,
        "cache_disk_gb": cache_gb,
        "outputs_disk_gb": MODELS * summary["model_bytes"] / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python experiments/rehearse.py",
                                     description="Rehearse the study through the real CLI.")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--out", type=Path, default=None,
                        help="working directory (default: a temporary one, removed at the end)")
    parser.add_argument("--subjects", type=int, default=None,
                        help="sample patients (default: 200 on a GPU, 60 on a CPU)")
    parser.add_argument("--formulations", default=None,
                        help="default: binary,multilabel,multiclass on a GPU, multiclass on a CPU")
    parser.add_argument("--fullsize-dicoms", type=int, default=12)
    parser.add_argument("--cache-workers", type=int, default=4, help="data.cache_workers")
    parser.add_argument("--keep", action="store_true", help="keep --out afterwards")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="more cxr-train overrides, e.g. model=resnet50 data.image_size=64 "
                             "(the test's smoke form)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    subjects = args.subjects or (200 if device == "cuda" else 60)
    formulations = args.formulations or (ALL_FORMULATIONS if device == "cuda" else "multiclass")
    extra = CPU_OVERRIDES if device == "cpu" else [f"data.cache_workers={args.cache_workers}"]
    extra = [*extra, *args.overrides]
    cache_workers = 2 if device == "cpu" else args.cache_workers
    out = args.out or Path(tempfile.mkdtemp(prefix="cxr-rehearsal-"))
    started = time.perf_counter()
    try:
        root = generate_sample(out / "download", n_subjects=subjects, seed=0, trainable=True)
        cache_img_s = cache_rate_per_core(args.fullsize_dicoms) * cache_workers
        sweep, study_s = run_study(out, root, device, formulations, extra)
        summary = summarise(sweep)
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    figures = {"device": device, "subjects": subjects, "image_size": IMAGE_SIZE,
               "cache_build_img_s": cache_img_s, "cache_workers": cache_workers,
               "formulations": formulations,
               **{k: v for k, v in summary.items() if k != "model_bytes"},
               "rehearsal_s": time.perf_counter() - started, "study_cli_s": study_s,
               "projection": project(summary, cache_img_s),
               "overrides": ["model.weights=none", "unfreeze.interval=1",
                             *(extra if device == "cpu" else args.overrides)]}
    log.info("Projected full study (%d images, %d models, <= 40 epochs each): %.2f h "
             "(cache %.2f h), cache %.1f GB, outputs %.1f GB", STUDY_IMAGES, MODELS,
             figures["projection"]["total_h_worst_case"], figures["projection"]["cache_build_h"],
             figures["projection"]["cache_disk_gb"], figures["projection"]["outputs_disk_gb"])
    sys.stdout.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()

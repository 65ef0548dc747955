"""Training and prediction throughput through the real loop (issue 16): one JSON line.

    .venv/bin/python experiments/bench_gpu.py [--reduced] [--backbone resnet152] [--size 512]
        [--batch 32] [--images 512] [--warmup 5] [--steps 20] [--files 64]
    make bench-gpu

Training: the real :class:`CXRClassifier` (multilabel) with the real
:class:`ProgressiveUnfreezing` and :class:`CXRDataModule` (the generated MIMIC-CXR-format sample,
its memory-mapped cache, augmentation on, the shipped loader options) in a Lightning Trainer
(``bf16-mixed`` on CUDA, float32 on CPU). Per stage (head, +layer4, +layer3, all), after
``--warmup`` untimed steps: steady-state img/s over ``--steps`` steps, TFLOP/s (FLOPs of one
whole step counted by ``torch.utils.flop_counter``) and % of the GPU's dense bf16 peak (a small
table by name; null on CPU or an unknown GPU), the fraction of step time spent waiting for the
next batch, and peak memory. Then the fully unfrozen stage with each shipped optimisation
undone on its own (channels-last off, the fused/foreach AdamW off) and ``trainer.compile`` on
(not in ``--reduced``). On CUDA every step ends with a synchronisation, so the time waiting
for data is not hidden by the asynchronous queue.

Prediction: :func:`predict_files` end to end from 1024 px PNGs and 2500x2000 12-bit DICOMs,
with 0, 4 and all cores' decoding workers.

``--reduced`` (automatic on CPU): ResNet18 at 64 px, batch 8, a few dozen images; under ~2
minutes on two cores. It prints; it does not assert.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from bench_data import synthetic_pixels, write_dicom
from bench_predict import end_to_end_throughput, synthetic_radiographs
from bench_unfreeze import CACHE_SUFFIX, STAGES, trainable_blocks
from torch.utils.flop_counter import FlopCounterMode

from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing
from cxr_lightning.data.datamodule import CXRDataModule
from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.inference.bundle import save_bundle
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import MultilabelFormulation, plan_for

log = logging.getLogger("bench_gpu")

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0}
"""Dense bf16 tensor-core peaks (vendor data sheets, SXM where there are several)."""

TRAINING_STAGES = [stage for stage in STAGES
                   if stage != "naive-head" and not stage.endswith(CACHE_SUFFIX)]
"""The settings trained through the real loop on images (bench_unfreeze's ``+cache`` variants
time the step on stored activations instead)."""


def peak_tflops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak from :data:`PEAK_BF16_TFLOPS`; None on CPU or if unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


class SteadyClock(pl.Callback):
    """Times the steps after ``warmup``: whole steps, and the gaps between them (the loop
    waiting for the next batch and its transfer); counts one warm-up step's FLOPs."""

    def __init__(self, device: torch.device, warmup: int) -> None:
        self.device = device
        self.warmup = warmup
        self.flops = 0
        self.step_seconds = 0.0
        self.wait_seconds = 0.0
        self.started = 0.0
        self.ended: float | None = None
        self.counter: FlopCounterMode | None = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self.started = self._now()
        if batch_idx >= self.warmup and self.ended is not None:
            self.wait_seconds += self.started - self.ended
        if batch_idx == self.warmup - 1:  # the last warm-up step: compiled, autotuned
            self.counter = FlopCounterMode(display=False)
            self.counter.__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ended = self._now()
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            self.flops, self.counter = self.counter.get_total_flops(), None
        if batch_idx >= self.warmup:
            self.step_seconds += self.ended - self.started


class LoopAdamW(CXRClassifier):
    """The classifier with AdamW's per-parameter loop (neither fused nor foreach)."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(trainable, lr=self.hparams.lr, foreach=False, fused=False)


def train_stage(args: argparse.Namespace, datamodule: CXRDataModule, device: torch.device,
                stage: str, variant: str = "shipped") -> dict[str, Any]:
    """One fit of ``--warmup + --steps`` steps at ``stage`` under ``variant``."""
    torch.manual_seed(0)
    model_class = LoopAdamW if variant == "fused_off" else CXRClassifier
    model = model_class(MultilabelFormulation(), backbone=args.backbone, weights="none")
    if variant == "channels_last_off":
        model.backbone.to(memory_format=torch.contiguous_format)
    if variant == "compile_on":
        model.compile_backbone()
    last = STAGES[stage]
    clock = SteadyClock(device, args.warmup)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_steps=args.warmup + args.steps, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[ProgressiveUnfreezing(schedule=[] if last is None else [(0, "all")],
                                         until=last), clock],
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit(model, datamodule=datamodule)
    names = [name for name, _ in model.unfreezable_blocks()]
    if trainable_blocks(model) != ([] if last is None else names[: names.index(last) + 1]):
        raise RuntimeError(f"{stage}: unexpected trainable blocks {trainable_blocks(model)}")
    if trainer.global_step != args.warmup + args.steps:
        raise RuntimeError(f"{stage}: {trainer.global_step} steps; use more --images")
    step = clock.step_seconds / args.steps
    tflops = clock.flops / step / 1e12
    peak = peak_tflops(device)
    return {
        "img_per_s": args.batch / step,
        "tflops": tflops,
        "percent_of_peak": None if peak is None else 100 * tflops / peak,
        "data_wait_fraction": clock.wait_seconds / (clock.wait_seconds + clock.step_seconds),
        "peak_memory_mb": (torch.cuda.max_memory_allocated(device) / 2**20
                           if device.type == "cuda"
                           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def prediction(args: argparse.Namespace, folder: Path, device: torch.device) -> dict[str, Any]:
    """End-to-end img/s from PNGs and DICOMs with 0, 4 and all cores' decoding workers."""
    plan = plan_for("multilabel")
    model = CXRClassifier(plan.members[0], backbone=args.backbone, weights="none")
    model_path = save_bundle(folder / "model.pt", plan=plan, models=[model],
                             preprocessing=Preprocessing(args.size))
    (folder / "png").mkdir()
    (folder / "dcm").mkdir()
    rng = np.random.default_rng(0)
    inputs = {"png": synthetic_radiographs(folder / "png", args.files)}
    inputs["dicom"] = [folder / "dcm" / f"{i:04d}.dcm" for i in range(args.files // 2)]
    for path in inputs["dicom"]:
        write_dicom(path, synthetic_pixels(rng), compress=False)
    cores = len(os.sched_getaffinity(0))
    return {f"{kind}_workers_{workers}": end_to_end_throughput(
                model_path, files, device, args.batch, False, folder / "out", workers)
            for kind, files in inputs.items() for workers in sorted({0, 4, cores})}


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduced", action="store_true", help="automatic on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet152")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--subjects", type=int, default=400, help="of the generated sample")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--files", type=int, default=64, help="PNGs (and half as many DICOMs)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.reduced or device.type == "cpu":
        args.reduced = True
        args.backbone, args.size, args.batch, args.subjects = "resnet18", 64, 8, 40
        args.warmup, args.steps, args.files, args.workers = 2, 3, 8, 1
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        datamodule = CXRDataModule(
            root=str(folder / "sample"), source="sample", image_size=args.size,
            batch_size=args.batch, num_workers=args.workers, cache_dir=str(folder / "cache"),
            cache_workers=args.workers, sample={"n_subjects": args.subjects, "seed": 0})
        datamodule.prepare_data()
        stages = {stage: train_stage(args, datamodule, device, stage)
                  for stage in TRAINING_STAGES}
        variants = ["channels_last_off", "fused_off", *([] if args.reduced else ["compile_on"])]
        ablation = {"shipped": stages["all"],
                    **{v: train_stage(args, datamodule, device, "all", v) for v in variants}}
        predict = prediction(args, folder, device)
    summary = {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"),
        "reduced": args.reduced, "backbone": args.backbone, "size": args.size,
        "batch": args.batch, "precision": "bf16-mixed" if device.type == "cuda" else "32-true",
        "train_images": len(datamodule.split_manifest("train")), "loader_workers": args.workers,
        "warmup": args.warmup, "steps": args.steps,
        "peak_tflops": peak_tflops(device), "stages": stages, "all_stage_variants": ablation,
        "predict_img_per_s": predict, "seconds": time.perf_counter() - started,
    }
    print(json.dumps(summary))  # noqa: T201
    return summary


if __name__ == "__main__":
    main()

"""Prediction throughput: the network alone, and files -> predictions.csv rows end to end.

    .venv/bin/python experiments/bench_predict.py [--backbone resnet152] [--size 512]
        [--batch 8] [--batches 3] [--files 16] [--device cpu] [--heatmaps]
    make bench-predict

Builds a random-init model (no download; the speed does not depend on the weights) of the
multilabel formulation, saves it as a model.pt and loads it through the real code, then
measures on ``--device``:

- network: ``FindingProbabilities`` under ``torch.inference_mode`` on normalised float batches
  of ``--batch`` images at ``--size`` (one warm-up batch, then ``--batches`` timed), img/s;
- end to end: :func:`~cxr_lightning.inference.predictor.predict_files` on ``--files``
  synthetic 1024x1024 8-bit PNG radiographs written to a temporary folder (decode, resize,
  normalise, network, table), img/s; with ``--heatmaps`` also with Grad-CAM overlays.

It prints; it does not assert. Timings need an idle machine: on a shared one they are only
indicative. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.inference.bundle import load_model, save_bundle
from cxr_lightning.inference.predictor import predict_files, resolve_device
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import plan_for

log = logging.getLogger("bench_predict")

FILE_SIDE = 1024


def synthetic_radiographs(folder: Path, count: int) -> list[Path]:
    """``count`` smooth 1024x1024 8-bit grey PNGs (blobs + gradient + noise)."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        coarse = rng.normal(128, 40, size=(12, 10)).astype(np.float32)
        image = cv2.resize(coarse, (FILE_SIDE, FILE_SIDE), interpolation=cv2.INTER_CUBIC)
        image += rng.normal(0, 6, size=image.shape).astype(np.float32)
        path = folder / f"radiograph_{index:03d}.png"
        cv2.imwrite(str(path), image.clip(0, 255).astype(np.uint8))
        paths.append(path)
    return paths


def network_throughput(model_path: Path, device: torch.device, batch: int, batches: int,
                       size: int) -> float:
    """img/s of the loaded network alone on normalised float batches."""
    network = load_model(model_path).network().to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode():
        network(images)  # warm-up
        _synchronise(device)
        start = time.perf_counter()
        for _ in range(batches):
            network(images)
        _synchronise(device)
    return batch * batches / (time.perf_counter() - start)


def end_to_end_throughput(model_path: Path, files: list[Path], device: torch.device,
                          batch: int, heatmaps: bool, out_dir: Path,
                          num_workers: int | None = None) -> float:
    """img/s of predict_files over the files (model loading excluded; ``num_workers`` None:
    the predictor's default)."""
    bundle = load_model(model_path)
    start = time.perf_counter()
    table = predict_files(bundle, files, out_dir, heatmaps=heatmaps, batch_size=batch,
                          device=str(device), num_workers=num_workers)
    _synchronise(device)
    elapsed = time.perf_counter() - start
    if (table["error"] != "").any():
        raise RuntimeError(f"unexpected failures: {table['error'].unique()}")
    return len(files) / elapsed


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet152")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--heatmaps", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    device = resolve_device(args.device)
    plan = plan_for("multilabel")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model = CXRClassifier(plan.members[0], backbone=args.backbone, weights="none")
        model_path = save_bundle(folder / "model.pt", plan=plan, models=[model],
                                 preprocessing=Preprocessing(args.size))
        files = synthetic_radiographs(folder, args.files)
        summary = {
            "backbone": args.backbone, "size": args.size, "batch": args.batch,
            "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else f"{os.cpu_count()} CPU cores, torch threads "
                                 f"{torch.get_num_threads()}"),
            "network_img_per_s": network_throughput(model_path, device, args.batch,
                                                    args.batches, args.size),
            "end_to_end_img_per_s": end_to_end_throughput(model_path, files, device,
                                                          args.batch, False, folder / "out"),
        }
        if args.heatmaps:
            summary["end_to_end_heatmaps_img_per_s"] = end_to_end_throughput(
                model_path, files, device, args.batch, True, folder / "out")
    for key, value in summary.items():
        log.info("%-32s %s", key, f"{value:.2f}" if isinstance(value, float) else value)
    print(json.dumps(summary))  # noqa: T201
    return summary


if __name__ == "__main__":
    main()

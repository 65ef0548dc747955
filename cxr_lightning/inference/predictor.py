"""The batch loop behind ``python -m cxr_lightning.predict``: files -> predictions table.

``predictions.csv`` has one row per input, in input order, with the columns
:data:`PREDICTION_COLUMNS`: ``path``; ``edema_prob``, ``effusion_prob`` (each finding from the
model of the formulation that predicts it; multiclass: marginals); ``edema_label``,
``effusion_label`` (1 where the probability is > that finding's threshold, else 0: the
project's decision rule); ``threshold_rule`` (the operating point: ``0.5``, ``youden`` or
``sens90``, see :data:`THRESHOLD_RULES`), ``edema_threshold``, ``effusion_threshold`` (the
thresholds it gave); ``formulation``; ``error`` (empty on success, else
why the file could not be read; its probabilities and labels are then empty). With
heatmaps, ``edema_heatmap`` and ``effusion_heatmap`` give each overlay's path relative to
the output folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.data.workers import OneOpenCVThreadLoader
from cxr_lightning.errors import BadValueError
from cxr_lightning.evaluation.metrics import DEFAULT_OPERATING_POINT, THRESHOLD, probability_column
from cxr_lightning.evaluation.thresholds import (
    TARGET_SENSITIVITY,
    YOUDEN,
    sensitivity_point_name,
)
from cxr_lightning.findings import FINDINGS
from cxr_lightning.inference.bundle import ModelBundle
from cxr_lightning.inference.heatmaps import finding_heatmaps, write_overlay
from cxr_lightning.inference.images import InputBatch, InputImages, PreparedImage, collate_inputs

log = logging.getLogger(__name__)

HEATMAP_DIR = "heatmaps"


def label_column(finding: str) -> str:
    """Name of a finding's thresholded label column in predictions.csv."""
    return f"{finding}_label"


def threshold_column(finding: str) -> str:
    """Name of the column holding the threshold a finding's label used."""
    return f"{finding}_threshold"


def heatmap_column(finding: str) -> str:
    """Name of a finding's overlay-path column in predictions.csv (with heatmaps)."""
    return f"{finding}_heatmap"


PREDICTION_COLUMNS: tuple[str, ...] = (
    "path", *(probability_column(f) for f in FINDINGS), *(label_column(f) for f in FINDINGS),
    "threshold_rule", *(threshold_column(f) for f in FINDINGS), "formulation", "error")

THRESHOLD_RULES: tuple[str, ...] = (DEFAULT_OPERATING_POINT, YOUDEN,
                                    sensitivity_point_name(TARGET_SENSITIVITY))
"""The operating points a label can use: ``0.5`` (the README's and the report's accuracy),
or one chosen on the job's validation split and saved in ``model.pt``: ``youden`` (Youden's J)
or ``sens90`` (the most specific point at 90% sensitivity)."""


def label_thresholds(bundle: ModelBundle, rule: str) -> dict[str, float]:
    """``{finding: threshold}`` of the operating point ``rule`` (:data:`THRESHOLD_RULES`): 0.5,
    or the validation-chosen one that ``model.pt`` records (``threshold_record``'s
    ``operating_points``); a user error when the model records none for a finding."""
    if rule not in THRESHOLD_RULES:
        raise BadValueError(f"threshold={rule!r}: expected one of {THRESHOLD_RULES}")
    if rule == DEFAULT_OPERATING_POINT:
        return dict.fromkeys(FINDINGS, THRESHOLD)
    record = bundle.threshold_record if isinstance(bundle.threshold_record, dict) else {}
    points = record.get("operating_points") or {}
    missing = [f for f in FINDINGS if rule not in (points.get(f) or {})]
    if missing:
        raise BadValueError(
            f"--threshold {rule}: {bundle.source} records no {rule} threshold for "
            f"{', '.join(missing)} (a checkpoint records none; a job records none for a "
            f"finding whose validation split held one class): use --threshold 0.5")
    return {f: float(points[f][rule]) for f in FINDINGS}


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}: CUDA is not available here; use device=cpu")
    return resolved


@dataclass(frozen=True)
class DeviceOptions:
    """How the network runs and its batches travel on one kind of device."""

    autocast: torch.dtype | None
    """The ``torch.autocast`` dtype of the forward (None: float32)."""
    memory_format: torch.memory_format
    """Of the network's weights and of its input batches."""
    pin_memory: bool
    """Batches collated into page-locked memory, so their copy to the device can be
    asynchronous (``non_blocking``) and overlap the device's work."""


def device_options(device: torch.device) -> DeviceOptions:
    """CUDA: bf16 autocast (where the GPU supports bf16), channels-last, pinned memory and
    asynchronous copies. CPU: float32, NCHW, no pinning (the training-time numerics)."""
    if device.type == "cuda":
        return DeviceOptions(torch.bfloat16 if torch.cuda.is_bf16_supported() else None,
                             torch.channels_last, pin_memory=True)
    return DeviceOptions(None, torch.contiguous_format, pin_memory=False)


MAX_WORKERS = 8
"""Decoding processes by default (decode and resize are per-image and independent)."""


def default_workers(files: int, batch_size: int) -> int:
    """DataLoader workers when not given: ``min(8, usable cores, batches)``; 0 (decode in
    this process) for a single batch, where a worker would overlap nothing."""
    batches = -(-files // batch_size)
    if batches <= 1:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(MAX_WORKERS, cores or 1, batches)


def predict_files(
    bundle: ModelBundle,
    paths: Sequence[Path],
    out_dir: Path | None = None,
    heatmaps: bool = False,
    batch_size: int = 16,
    device: str = "auto",
    num_workers: int | None = None,
    threshold: str = DEFAULT_OPERATING_POINT,
) -> pd.DataFrame:
    """Predict every file; the table of :data:`PREDICTION_COLUMNS` (module doc), labelled
    at the operating point ``threshold`` (:func:`label_thresholds`).

    Files that cannot be read become rows with their ``error``; the rest of the batch goes on.
    ``heatmaps`` writes a Grad-CAM overlay per image and finding into ``out_dir/heatmaps``.
    Files are decoded in ``num_workers`` processes (None: :func:`default_workers`; 0: here).
    The network runs under :func:`device_options`; probabilities stay on the device until the
    last batch and come back in one copy (no per-batch wait for the device).
    """
    if heatmaps and out_dir is None:
        raise ValueError("heatmaps need an output folder (out=DIR)")
    thresholds = label_thresholds(bundle, threshold)
    log.info("Labels: 1 where the probability > the %s threshold (%s)", threshold,
             ", ".join(f"{f} {t:.3f}" for f, t in thresholds.items()))
    target = resolve_device(device)
    options = device_options(target)
    network = bundle.network().to(target, memory_format=options.memory_format)
    if num_workers is None:
        num_workers = default_workers(len(paths), batch_size)
    dataset = InputImages(paths, bundle.preprocessing, keep_originals=heatmaps)
    loader = OneOpenCVThreadLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                   collate_fn=collate_inputs, pin_memory=options.pin_memory)
    batch_probabilities: list[torch.Tensor] = []
    decoded: list[int] = []
    errors = [""] * len(paths)
    overlays = {f: [""] * len(paths) for f in FINDINGS}
    log.info("Predicting %d files with the %s model on %s (%d decoding workers)", len(paths),
             bundle.formulation, target, num_workers)
    with (tqdm(total=len(paths), unit="img", desc=f"Predicting ({bundle.formulation})") as bar,
          OverlayWriter(out_dir / HEATMAP_DIR if heatmaps else None,
                        bundle.preprocessing) as writer):
        for batch in loader:
            for item in batch.items:
                errors[item.index] = item.error
            if batch.decoded:
                images = bundle.preprocessing.normalise(
                    batch.images.to(target, non_blocking=options.pin_memory))
                images = images.contiguous(memory_format=options.memory_format)
                with torch.inference_mode(), torch.autocast(target.type, options.autocast,
                                                            enabled=options.autocast is not None):
                    batch_probabilities.append(network(images))
                decoded.extend(item.index for item in batch.decoded)
                if heatmaps:
                    writer.submit(finding_heatmaps(network, images), batch, overlays,
                                  batch_probabilities[-1].double().cpu().numpy())
            bar.update(len(batch.items))
    probabilities = _gather(batch_probabilities, decoded, errors)
    table = _table(paths, probabilities, errors, bundle.formulation, threshold, thresholds)
    if heatmaps:
        for finding in FINDINGS:
            table[heatmap_column(finding)] = overlays[finding]
    failed = int((table["error"] != "").sum())
    log.info("Predicted %d of %d files; %d could not be read (see the error column)",
             len(paths) - failed, len(paths), failed)
    return table


def write_predictions(table: pd.DataFrame, out_dir: Path) -> Path:
    """Write ``out_dir/predictions.csv`` atomically (empty cells for missing values)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "predictions.csv"
    partial = path.with_name(path.name + ".partial")
    table.to_csv(partial, index=False)
    partial.replace(path)
    return path


def _gather(batch_probabilities: list[torch.Tensor], decoded: list[int],
            errors: list[str]) -> np.ndarray:
    """(files, 2) float64 probabilities from the per-batch device tensors, in one copy; NaN
    rows for the files not decoded, and for non-finite outputs (with their error)."""
    probabilities = np.full((len(errors), len(FINDINGS)), np.nan)
    if not decoded:
        return probabilities
    rows = torch.cat(batch_probabilities).double().cpu().numpy()
    finite = np.isfinite(rows).all(axis=1)
    indices = np.asarray(decoded)
    probabilities[indices[finite]] = rows[finite]
    for index in indices[~finite]:
        errors[index] = "the network returned a non-finite probability"
    return probabilities


class OverlayWriter:
    """Writes a batch's Grad-CAM overlays in a thread pool while the next batch is computed.

    Threads, not processes: the work (OpenCV resize and colour map, zlib) runs outside the
    GIL, and nothing (a 1024 px original per image) is pickled. Errors surface at the latest
    when the block closes.
    """

    def __init__(self, folder: Path | None, preprocessing: Preprocessing) -> None:
        self.folder = folder
        self.preprocessing = preprocessing
        self.pool: ThreadPoolExecutor | None = None
        self.pending: list[Future] = []

    def __enter__(self) -> OverlayWriter:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.pool = ThreadPoolExecutor(max_workers=min(MAX_WORKERS, os.cpu_count() or 1))
        return self

    def __exit__(self, error_type: type[BaseException] | None, *exc_info: object) -> None:
        if self.pool is None:
            return
        try:
            if error_type is None:  # a write's error is raised here; never over another one
                for future in self.pending:
                    future.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, maps: np.ndarray, batch: InputBatch, overlays: dict[str, list[str]],
               probabilities: np.ndarray) -> None:
        """Queue the overlays of the batch's decoded items (``maps``: (k, 2, S, S);
        ``probabilities``: (k, 2), each overlay's title)."""
        if self.pool is None:
            raise RuntimeError("OverlayWriter.submit outside its with-block or without a folder")
        for item, item_maps, item_probabilities in zip(batch.decoded, maps, probabilities,
                                                       strict=True):
            for finding, square_map, probability in zip(FINDINGS, item_maps,
                                                        item_probabilities, strict=True):
                name = f"{item.index:05d}_{item.path.stem}_{finding}.png"
                self.pending.append(self.pool.submit(self._write, self.folder / name, item,
                                                     square_map, finding, float(probability)))
                overlays[finding][item.index] = f"{HEATMAP_DIR}/{name}"

    def _write(self, path: Path, item: PreparedImage, square_map: np.ndarray, finding: str,
               probability: float) -> Path:
        heatmap = self.preprocessing.to_original_geometry(square_map, item.original_shape)
        return write_overlay(path, item.original, heatmap, finding, probability)


def _table(paths: Sequence[Path], probabilities: np.ndarray, errors: list[str],
           formulation: str, rule: str, thresholds: dict[str, float]) -> pd.DataFrame:
    table = pd.DataFrame({"path": [str(p) for p in paths]})
    for column, finding in enumerate(FINDINGS):
        table[probability_column(finding)] = probabilities[:, column]
    for column, finding in enumerate(FINDINGS):
        values = probabilities[:, column]
        labels = pd.Series(values > thresholds[finding], dtype="Int64")
        table[label_column(finding)] = labels.mask(~np.isfinite(values))
    table["threshold_rule"] = rule
    for finding in FINDINGS:
        table[threshold_column(finding)] = thresholds[finding]
    table["formulation"] = formulation
    table["error"] = errors
    return table[list(PREDICTION_COLUMNS)]

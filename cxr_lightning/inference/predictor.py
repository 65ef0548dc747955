"""The batch loop behind ``python -m cxr_lightning.predict``: files -> predictions table.

``predictions.csv`` has one row per input, in input order, with the columns
:data:`PREDICTION_COLUMNS`: ``path``; ``edema_prob``, ``effusion_prob`` (each finding from the
model of the formulation that predicts it; multiclass: marginals); ``edema_label``,
``effusion_label`` (1 where the probability is > the model's threshold for that finding,
else 0: the project's decision rule); ``formulation``; ``error`` (empty on success, else
why the file could not be read; its probabilities and labels are then empty). With
heatmaps, ``edema_heatmap`` and ``effusion_heatmap`` give each overlay's path relative to
the output folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cxr_lightning.evaluation.metrics import probability_column
from cxr_lightning.findings import FINDINGS
from cxr_lightning.inference.bundle import ModelBundle
from cxr_lightning.inference.heatmaps import finding_heatmaps, write_overlay
from cxr_lightning.inference.images import InputBatch, InputImages, collate_inputs
from cxr_lightning.inference.network import FindingProbabilities

log = logging.getLogger(__name__)

HEATMAP_DIR = "heatmaps"


def label_column(finding: str) -> str:
    """Name of a finding's thresholded label column in predictions.csv."""
    return f"{finding}_label"


def heatmap_column(finding: str) -> str:
    """Name of a finding's overlay-path column in predictions.csv (with heatmaps)."""
    return f"{finding}_heatmap"


PREDICTION_COLUMNS: tuple[str, ...] = (
    "path", *(probability_column(f) for f in FINDINGS), *(label_column(f) for f in FINDINGS),
    "formulation", "error")


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}: CUDA is not available here; use device=cpu")
    return resolved


def predict_files(
    bundle: ModelBundle,
    paths: Sequence[Path],
    out_dir: Path | None = None,
    heatmaps: bool = False,
    batch_size: int = 16,
    device: str = "auto",
    num_workers: int = 0,
) -> pd.DataFrame:
    """Predict every file; the table of :data:`PREDICTION_COLUMNS` (module doc).

    Files that cannot be read become rows with their ``error``; the rest of the batch goes on.
    ``heatmaps`` writes a Grad-CAM overlay per image and finding into ``out_dir/heatmaps``.
    """
    if heatmaps and out_dir is None:
        raise ValueError("heatmaps need an output folder (out=DIR)")
    target = resolve_device(device)
    network = bundle.network().to(target)
    dataset = InputImages(paths, bundle.preprocessing, keep_originals=heatmaps)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_inputs, pin_memory=target.type == "cuda")
    probabilities = np.full((len(paths), len(FINDINGS)), np.nan)
    errors = [""] * len(paths)
    overlays = {f: [""] * len(paths) for f in FINDINGS}
    log.info("Predicting %d files with the %s model on %s", len(paths), bundle.formulation,
             target)
    with tqdm(total=len(paths), unit="img", desc=f"Predicting ({bundle.formulation})") as bar:
        for batch in loader:
            for item in batch.items:
                errors[item.index] = item.error
            if batch.decoded:
                images = bundle.preprocessing.normalise(batch.images.to(target))
                _predict_batch(network, images, batch, probabilities, errors)
                if heatmaps:
                    _write_heatmaps(network, images, batch, bundle, out_dir, overlays)
            bar.update(len(batch.items))
    table = _table(paths, probabilities, errors, bundle)
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


def _predict_batch(network: FindingProbabilities, images: torch.Tensor, batch: InputBatch,
                   probabilities: np.ndarray, errors: list[str]) -> None:
    with torch.inference_mode():
        batch_probabilities = network(images).double().cpu().numpy()
    for item, row in zip(batch.decoded, batch_probabilities, strict=True):
        if np.isfinite(row).all():
            probabilities[item.index] = row
        else:
            errors[item.index] = "the network returned a non-finite probability"


def _write_heatmaps(network: FindingProbabilities, images: torch.Tensor, batch: InputBatch,
                    bundle: ModelBundle, out_dir: Path, overlays: dict[str, list[str]]) -> None:
    folder = out_dir / HEATMAP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    maps = finding_heatmaps(network, images)
    for item, item_maps in zip(batch.decoded, maps, strict=True):
        stem = item.path.stem
        for finding, square_map in zip(FINDINGS, item_maps, strict=True):
            name = f"{item.index:05d}_{stem}_{finding}.png"
            heatmap = bundle.preprocessing.to_original_geometry(square_map, item.original_shape)
            write_overlay(folder / name, item.original, heatmap)
            overlays[finding][item.index] = f"{HEATMAP_DIR}/{name}"


def _table(paths: Sequence[Path], probabilities: np.ndarray, errors: list[str],
           bundle: ModelBundle) -> pd.DataFrame:
    table = pd.DataFrame({"path": [str(p) for p in paths]})
    for column, finding in enumerate(FINDINGS):
        table[probability_column(finding)] = probabilities[:, column]
    for column, finding in enumerate(FINDINGS):
        values = probabilities[:, column]
        labels = pd.Series(values > bundle.thresholds[finding], dtype="Int64")
        table[label_column(finding)] = labels.mask(~np.isfinite(values))
    table["formulation"] = bundle.formulation
    table["error"] = errors
    return table[list(PREDICTION_COLUMNS)]

"""Predict edema and effusion on radiographs with a trained model: the predict CLI.

Usage::

    python -m cxr_lightning.predict ckpt=PATH inputs=PATH_OR_GLOB [out=DIR] [heatmaps=true]
        [batch_size=16] [device=auto|cpu|cuda|cuda:N] [num_workers=N]
        [formulation=NAME] [backbone=NAME]

``ckpt`` is a job's ``model.pt`` (or a multilabel/multiclass Lightning ``.ckpt``); its saved
preprocessing, thresholds and formulation are used, never re-specified here. ``inputs`` is a
file, a folder (searched recursively for .dcm/.png/.jpg/.jpeg), a quoted glob pattern
(``'scans/**/*.dcm'``), a manifest CSV with a ``path`` column, or a list ``[a,b]`` of these.
Writes ``out/predictions.csv`` (see :mod:`cxr_lightning.inference.predictor`) and, with
``heatmaps=true``, Grad-CAM overlays in ``out/heatmaps/``. ``formulation=`` / ``backbone=``
make loading fail unless the model is of that kind.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from cxr_lightning.errors import run_command
from cxr_lightning.inference.bundle import load_model
from cxr_lightning.inference.cli import parse_arguments
from cxr_lightning.inference.inputs import collect_inputs
from cxr_lightning.inference.predictor import predict_files, write_predictions

log = logging.getLogger(__name__)

USAGE = "usage:" + (__doc__ or "").split("Usage::", 1)[-1]


@dataclass
class PredictArguments:
    """The command line of ``python -m cxr_lightning.predict`` (module doc)."""

    ckpt: str = MISSING
    inputs: Any = MISSING
    out: str = "predictions"
    heatmaps: bool = False
    batch_size: int = 16
    device: str = "auto"
    num_workers: int | None = None  # None: min(8, cores, batches) decoding workers
    formulation: str | None = None
    backbone: str | None = None


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the CLI; returns the path of predictions.csv."""
    args = parse_arguments(PredictArguments, sys.argv[1:] if argv is None else argv, USAGE)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    paths = collect_inputs(args.inputs)
    bundle = load_model(args.ckpt, args.formulation, args.backbone)
    out_dir = Path(args.out)
    table = predict_files(bundle, paths, out_dir, heatmaps=args.heatmaps,
                          batch_size=args.batch_size, device=args.device,
                          num_workers=args.num_workers)
    path = write_predictions(table, out_dir)
    log.info("Wrote %s", path)
    return path


if __name__ == "__main__":
    raise SystemExit(run_command(main))

"""Predict edema and effusion on radiographs with a trained model: ``cxr-predict``
(``python -m cxr_lightning.predict``).

The model (``--ckpt``) is a job's ``model.pt``, or a multilabel/multiclass Lightning ``.ckpt``;
its saved preprocessing and formulation are used, never re-specified here. Labels are
probability > threshold at the operating point ``--threshold`` (default 0.5, the accuracy the
README and the report give; ``youden`` and ``sens90`` were chosen on the job's validation
split and saved in ``model.pt``); the log and the CSV's ``threshold_rule`` column name it. Each
input is a file, a folder (searched recursively for .dcm/.png/.jpg/.jpeg), a quoted glob
pattern (``'scans/**/*.dcm'``) or a manifest CSV with a ``path`` column. Writes
``OUT/predictions.csv`` (see :mod:`cxr_lightning.inference.predictor`) and, with
``--heatmaps``, Grad-CAM overlays in ``OUT/heatmaps/``.

Example: ``cxr-predict --ckpt outputs/runs/<job>/model.pt --inputs 'scans/**/*.dcm' --out preds``
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cxr_lightning.commands import command_parser, refuse_key_value
from cxr_lightning.console import quiet_console, summarised
from cxr_lightning.errors import run_command
from cxr_lightning.inference.bundle import load_model
from cxr_lightning.inference.inputs import collect_inputs
from cxr_lightning.inference.predictor import THRESHOLD_RULES, predict_files, write_predictions

log = logging.getLogger(__name__)

FORMULATIONS = ("binary", "multilabel", "multiclass")
CONSTANT_HEATMAPS = ("{count} Grad-CAM map(s) are constant: the gradients found no positive "
                     "evidence for the finding, so those overlays show the image alone (e.g. "
                     "{examples}). Expected for images the model calls clearly negative; on "
                     "images it calls positive, check that --ckpt is the model you meant")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (``--help`` shows it)."""
    refuse_key_value(argv, ("ckpt", "inputs", "out", "heatmaps", "batch_size", "device",
                            "num_workers", "formulation", "backbone", "threshold"))
    parser = command_parser("cxr_lightning.predict", __doc__ or "")
    parser.add_argument("--ckpt", required=True, metavar="PATH",
                        help="the model: a job's model.pt (or a multilabel/multiclass .ckpt)")
    parser.add_argument("--inputs", required=True, nargs="+", metavar="INPUT",
                        help="files, folders, quoted glob patterns or manifest CSVs")
    parser.add_argument("--out", default="predictions", metavar="DIR",
                        help="output folder for predictions.csv (and heatmaps/)")
    parser.add_argument("--threshold", choices=THRESHOLD_RULES, default=THRESHOLD_RULES[0],
                        help="labels are probability > threshold at this operating point: 0.5 "
                             "(the README's and the report's accuracy), or youden (Youden's J) "
                             "or sens90 (90%% sensitivity), chosen on the job's validation split")
    parser.add_argument("--heatmaps", action="store_true",
                        help="also write a Grad-CAM overlay per image and finding")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N",
                        help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--num-workers", type=int, default=None, metavar="N",
                        help="processes decoding the images (default: min(8, cores, batches))")
    parser.add_argument("--formulation", choices=FORMULATIONS, default=None,
                        help="refuse a model of another formulation")
    parser.add_argument("--backbone", default=None, metavar="NAME",
                        help="refuse a model of another backbone")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the CLI; returns the path of predictions.csv."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    quiet_console()
    paths = collect_inputs(args.inputs)
    bundle = load_model(args.ckpt, args.formulation, args.backbone)
    out_dir = Path(args.out)
    with summarised("cxr_lightning.inference.heatmaps", "Grad-CAM map is constant",
                    CONSTANT_HEATMAPS):
        table = predict_files(bundle, paths, out_dir, heatmaps=args.heatmaps,
                              batch_size=args.batch_size, device=args.device,
                              num_workers=args.num_workers, threshold=args.threshold)
    path = write_predictions(table, out_dir)
    log.info("Wrote %s", path)
    return path


if __name__ == "__main__":
    raise SystemExit(run_command(main))

"""Command line of the MIMIC-CXR-format sample generator (:mod:`cxr_lightning.data.sample`)::

    python -m cxr_lightning.data.sample --out DIR --n-subjects 400 --seed 0 [--exact]

Where ``--n-subjects`` patients are too few for a multiclass model (a split without images, or a
training split without an (edema, effusion) combination), the sample grows until they are enough
and the log says so; ``--exact`` writes exactly ``--n-subjects`` patients.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from cxr_lightning.commands import plain, program_name
from cxr_lightning.data.sample import generate
from cxr_lightning.data.sample.generate import LAYOUTS, generate_sample
from cxr_lightning.errors import run_command

logger = logging.getLogger(__name__)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected at least 1 subject")
    return value


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program_name("cxr_lightning.data.sample"),
                                     description=plain(generate.__doc__.split("\n\n")[0]))
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--n-subjects", type=_positive, default=400,
                        help="patients (default: %(default)s); more where a multiclass model "
                             "could not train on so few, unless --exact")
    parser.add_argument("--exact", action="store_true",
                        help="exactly --n-subjects patients, even too few to train on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing sample")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    parser.add_argument("--layout", choices=LAYOUTS, default="physionet",
                        help="physionet: DICOM project and MIMIC-CXR-JPG tables side by side "
                             "under OUT/physionet.org/files/ (as downloaded); single: all in OUT")
    parser.add_argument("--jpg", action="store_true",
                        help="also write the MIMIC-CXR-JPG project's .jpg images")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    root = generate_sample(args.out, args.n_subjects, args.seed, overwrite=args.overwrite,
                           workers=args.workers, layout=args.layout, jpg=args.jpg,
                           trainable=not args.exact)
    logger.info("Train on it with: python -m cxr_lightning.train data.root=%s", root)


if __name__ == "__main__":
    raise SystemExit(run_command(main))

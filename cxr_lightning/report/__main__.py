"""``python -m cxr_lightning.report [SWEEP_DIR] [--out DIR]``: a sweep's report.md and figures,
or, on a study directory (``cxr-study``'s, holding study.json), its REPORT.md and figures."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from cxr_lightning.commands import HelpFormatter, plain, program_name
from cxr_lightning.console import quiet_console
from cxr_lightning.errors import run_command
from cxr_lightning.evaluation.bootstrap import N_BOOTSTRAP
from cxr_lightning.report.build import compile_report, write_report
from cxr_lightning.report.load import newest_sweep
from cxr_lightning.report.study import compile_study, is_study_dir, write_study_report

log = logging.getLogger(__name__)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program_name("cxr_lightning.report"),
                                     description=plain(__doc__.split(":", 1)[1].strip()),
                                     formatter_class=HelpFormatter)
    parser.add_argument("sweep_dir", type=Path, nargs="?", default=None,
                        help="multirun directory (default: the newest under "
                             "$CXR_LIGHTNING_HOME/outputs/multiruns, else ./outputs/multiruns), "
                             "or a study directory (REPORT.md goes into it)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory of a multirun's report (default: SWEEP_DIR/report)")
    parser.add_argument("--n-bootstrap", type=int, default=N_BOOTSTRAP,
                        help="patient resamples for the ROC bands and paired AUROC intervals")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point; returns the path of report.md."""
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    quiet_console()
    sweep_dir = args.sweep_dir if args.sweep_dir is not None else newest_sweep()
    if is_study_dir(sweep_dir):
        return write_study_report(compile_study(sweep_dir, args.n_bootstrap))
    return write_report(compile_report(sweep_dir, args.n_bootstrap), args.out)


if __name__ == "__main__":
    raise SystemExit(run_command(main))

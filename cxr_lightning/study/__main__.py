"""``cxr-study [--dir DIR] [--seeds N] [--parts P,...] [OVERRIDE ...]``: the whole study, resumably.

Runs, in order, into one study directory: the cohort (Table 2 beside the study's counts, and the
list of its images to download), the cache, the baseline (binary, backbone frozen, until early
stopping), Table 1's schedule, experiment II (the three formulations over N seeds) and one
report (REPORT.md). The same command after an interruption or a failed job continues where it
stopped; a part that completed is skipped. On the embedded sample unless a dataset is
configured (MIMIC_CXR_ROOT, or data.root=... among the overrides): then the paper
configuration. OVERRIDEs (cxr-train's key=value) apply to every part.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cxr_lightning import preset
from cxr_lightning.commands import command_parser
from cxr_lightning.console import quiet_console
from cxr_lightning.errors import BadValueError, run_command
from cxr_lightning.study.parts import PART_NAMES, default_seeds, study_parts
from cxr_lightning.study.pipeline import Study

log = logging.getLogger(__name__)


def _part_names(text: str) -> list[str]:
    names = text.split(",")
    unknown = [name for name in names if name not in PART_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {unknown}: choose among "
                                         f"{','.join(PART_NAMES)}")
    return names


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command_parser("cxr_lightning.study", __doc__.split(":", 1)[1].strip())
    parser.add_argument("--dir", type=Path, default=None,
                        help="the study directory (default: $CXR_LIGHTNING_HOME/outputs/study, "
                             "else ./outputs/study)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="experiment II's seeds (default: 1 on the sample, 3 otherwise)")
    parser.add_argument("--parts", type=_part_names, default=",".join(PART_NAMES),
                        help="comma-separated parts to run (in the study's order whatever the "
                             "order given)")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                        help="cxr-train overrides for every part, e.g. data.root=...")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> bool:
    """Command-line entry point; True when every part completed (else exit status 1)."""
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    quiet_console()
    preset.use_command_line(list(args.overrides))
    chosen, reason = preset.choose()
    if not chosen:
        raise BadValueError("preset=...: cxr-study chooses the preset itself (the sample, or "
                            "the paper configuration when a dataset is configured)")
    seeds = args.seeds if args.seeds is not None else default_seeds(chosen)
    if seeds < 1:
        raise BadValueError(f"--seeds {seeds}: give at least 1")
    study_dir = args.dir or Path(os.environ.get("CXR_LIGHTNING_HOME", ".")) / "outputs" / "study"
    log.info("[study] preset %s (%s); %d seed(s); parts %s; into %s", chosen, reason, seeds,
             ", ".join(p for p in PART_NAMES if p in args.parts), study_dir)
    study = Study(study_dir, chosen, list(args.overrides), seeds)
    ok = study.run(study_parts(args.parts, chosen, seeds))
    if not ok:
        log.error("[study] some parts did not complete (study.json says which; each part's "
                  "cxr-train.log why): fix the cause and rerun the same command")
        raise SystemExit(1)
    return ok


if __name__ == "__main__":
    raise SystemExit(run_command(main))

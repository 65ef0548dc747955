"""The cohort of a source under its options: the study's Table 2 and more, and its command line.

The command line reads any registered source (:data:`~cxr_lightning.data.sources.SOURCES`)
under the options of :class:`~cxr_lightning.data.sources.options.SourceOptions` and logs the
study's Table 2 (images per (edema, effusion) combination and split, plus views, patients and the
images dropped by each rule); its last stdout line is one JSON object::

    python -m cxr_lightning.data.cohort --root DIR [--source mimic_cxr] [--labeler negbio]
        [--views PA AP] [--split official|random_patient] [--split-seed 0]
        [--policy edema=mask effusion=drop] [--out table.csv] [--download-list files.txt]

The split defaults to the one training uses for the source (``conf/data/<source>.yaml``'s
``data.split``: :data:`TRAINING_SPLITS`), so the table is the one a job trains on; the log and
the JSON (``split``, ``split_seed``) name it.

``--download-list`` writes the cohort's image paths relative to the source's project (for
MIMIC-CXR: ``files/p10/p10000032/s50414267/<dicom_id>.dcm``, one a line), to fetch only the
cohort: ``wget -x -nH -i files.txt -B https://physionet.org/files/mimic-cxr/2.0.0/`` or the same
keys from PhysioNet's cloud buckets. The cohort is built from the tables alone, so the list can
be written before any image is downloaded (an empty ``files/`` directory is enough).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from cxr_lightning.commands import HelpFormatter, plain, program_name
from cxr_lightning.data.manifest import SPLITS, CohortReport, cohort_table
from cxr_lightning.data.sources import SOURCES, build_manifest
from cxr_lightning.data.sources.options import (
    LABEL_POLICIES,
    LABELERS,
    SPLIT_METHODS,
    SourceOptions,
)
from cxr_lightning.errors import run_command

log = logging.getLogger(__name__)

TRAINING_SPLITS: dict[str, str] = {"mimic_cxr": "random_patient", "mimic_cxr_jpg": "random_patient",
                                   "sample": "random_patient", "nih": "official",
                                   "chexpert": "official"}
"""Per source, the ``data.split`` of its training config (tests/data/test_cohort.py keeps the
two equal)."""


def cohort_summary(manifest: pd.DataFrame, report: CohortReport) -> pd.DataFrame:
    """Table 2 and more, one frame indexed (section, item) with columns train/val/test/total.

    Sections: ``labels`` (images per (edema, effusion) combination, from :func:`cohort_table`),
    ``views`` (images per view), ``patients`` (subjects), ``dropped`` (images dropped by each
    rule, total column only).
    """
    labels = cohort_table(manifest)
    views = pd.crosstab(manifest["view"], manifest["split"])
    patients = manifest.groupby("split")["subject_id"].nunique().to_frame("subjects").T
    sections = {"labels": labels, "views": views, "patients": patients}
    table = pd.concat([frame.reindex(columns=list(SPLITS), fill_value=0)
                       for frame in sections.values()], keys=list(sections))
    table["total"] = table.sum(axis=1)
    table.loc[("patients", "subjects"), "total"] = manifest["subject_id"].nunique()
    dropped = pd.DataFrame({"total": list(report.dropped.values())},
                           index=pd.MultiIndex.from_product([["dropped"], list(report.dropped)]))
    table = pd.concat([table, dropped]).fillna(0).astype(int)
    table.index.names = ["section", "item"]
    return table


def download_list(manifest: pd.DataFrame) -> list[str]:
    """The cohort's image paths relative to the source's project (the manifest's ``path``),
    sorted, each once."""
    return sorted(set(manifest["path"].astype(str)))


def write_download_list(manifest: pd.DataFrame, path: Path) -> Path:
    """Write :func:`download_list` to ``path``, one path a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in download_list(manifest)))
    return path


def _policy_pair(text: str) -> tuple[str, str]:
    finding, sep, name = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FINDING=POLICY")
    return finding, name


def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, SourceOptions]:
    parser = argparse.ArgumentParser(prog=program_name("cxr_lightning.data.cohort"),
                                     description=plain(__doc__.split("\n\n")[0]),
                                     formatter_class=HelpFormatter)
    parser.add_argument("--root", type=Path, required=True,
                        help="the source's directory (data.root): for MIMIC-CXR the one holding "
                             "files/ (MIMIC_CXR_ROOT)")
    parser.add_argument("--source", choices=list(SOURCES), default="mimic_cxr",
                        help="how to read --root (data.source)")
    parser.add_argument("--labels-root", type=Path, default=None,
                        help="MIMIC only: directory holding the mimic-cxr-2.0.0-*.csv.gz tables "
                             "(default: --root if it holds them, else the sibling MIMIC-CXR-JPG "
                             "project)")
    parser.add_argument("--labeler", choices=LABELERS, default="chexpert",
                        help="MIMIC only: the labels' labeler")
    parser.add_argument("--policy", nargs="+", type=_policy_pair, default=[],
                        metavar="FINDING=POLICY",
                        help=f"per finding, one of {LABEL_POLICIES} (default drop)")
    parser.add_argument("--views", nargs="+", default=None, help="e.g. PA AP (default: all)")
    parser.add_argument("--split", choices=SPLIT_METHODS, default=None,
                        help="train/val/test split (data.split; default: training's for the "
                             "source, random_patient for MIMIC-CXR)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of a random split (data.split_seed)")
    parser.add_argument("--out", type=Path, default=None, help="save the table as CSV")
    parser.add_argument("--download-list", type=Path, default=None, metavar="FILE",
                        help="write the cohort's image paths, relative to --root, one a line "
                             "(for wget -i or a cloud bucket)")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    args = parser.parse_args(argv)
    if args.split is None:
        args.split = TRAINING_SPLITS[args.source]
    try:
        options = SourceOptions(labeler=args.labeler, label_policy=dict(args.policy),
                                views=args.views, split=args.split, split_seed=args.split_seed,
                                labels_root=args.labels_root)
    except ValueError as error:
        parser.error(str(error))
    return args, options


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: log (and optionally save) the cohort table, print its JSON."""
    args, options = _parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    manifest, report = build_manifest(args.source, args.root, options)
    summary = cohort_summary(manifest, report)
    split = f"{options.split} split" + (f" (seed {options.split_seed})"
                                        if options.split == "random_patient" else "")
    log.info("Cohort of %s (%s), %s, with %s:\n%s", args.root, args.source, split,
             options.to_dict(), summary.to_string())
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary.to_csv(args.out)
        log.info("Saved the cohort table to %s", args.out)
    if args.download_list is not None:
        write_download_list(manifest, args.download_list)
        log.info("Wrote the paths of the cohort's %d images to %s", len(manifest),
                 args.download_list)
    counts = asdict(report) | {"split": options.split, "split_seed": options.split_seed,
                               "table": cohort_table(manifest).to_dict(orient="index")}
    sys.stdout.write(json.dumps(counts) + "\n")


if __name__ == "__main__":
    raise SystemExit(run_command(main))

"""Cohort options: which labeler, label policy, views and split make the cohort, and its report.

:class:`CohortOptions` records every choice that turns a source's images into the cohort; its
:meth:`~CohortOptions.to_dict` goes into results.json and W&B. Label policies apply per finding
to the labelers' raw values (``1``, ``0``, ``-1`` uncertain, blank = not mentioned):

========  ================  ==============  =====================================================
policy    uncertain (-1)    blank           meaning
========  ================  ==============  =====================================================
drop      image dropped     image dropped   the study's cohort: both findings known (default)
zeros     0                 0               U-Zeros (CheXpert)
ones      1                 0               U-Ones (CheXpert): only *uncertain* becomes positive;
                                            blank ("not mentioned") stays negative
mask      NaN               NaN             image kept, finding excluded from loss and metrics
========  ================  ==============  =====================================================

Command line, the study's Table 2 (images per (edema, effusion) combination and split, plus
views, patients and the images dropped by each rule); its last stdout line is one JSON object::

    python -m cxr_lightning.data.cohort --root DIR [--labeler negbio] [--views PA AP]
        [--split official|random_patient] [--split-seed 0] [--policy edema=mask effusion=drop]
        [--out table.csv]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_lightning.commands import HelpFormatter, plain, program_name
from cxr_lightning.data.manifest import SPLITS, CohortReport, cohort_table
from cxr_lightning.errors import run_command
from cxr_lightning.findings import FINDINGS

log = logging.getLogger(__name__)

LABELERS: tuple[str, ...] = ("chexpert", "negbio")
LABEL_COLUMNS: dict[str, str] = {"edema": "Edema", "effusion": "Pleural Effusion"}
"""Finding -> its column in CheXpert-labeler tables (MIMIC-CXR's and CheXpert's CSVs)."""
SPLIT_METHODS: tuple[str, ...] = ("official", "random_patient")
LABEL_POLICIES: tuple[str, ...] = ("drop", "zeros", "ones", "mask")
RELABEL: dict[str, tuple[float, float]] = {
    "zeros": (0.0, 0.0), "ones": (1.0, 0.0), "mask": (math.nan, math.nan),
}
"""Policy -> (value for uncertain, value for blank); ``drop`` removes the image instead."""
UNCERTAIN = -1.0


@dataclass(frozen=True)
class CohortOptions:
    """Every choice that defines a cohort; validated and normalised on construction.

    ``label_policy`` is one policy name for both findings or maps a finding to a policy
    (findings left out get ``drop``); it is stored complete. ``views`` (e.g. ``("PA", "AP")``,
    frontal only; None = all) is stored as an upper-case tuple matching the manifest's ``view``
    (MIMIC's ViewPosition, ``UNKNOWN`` where it is blank).
    ``split`` is ``official`` (the source's split file) or ``random_patient`` (seeded 80/10/10
    of the source's patients with ``split_seed``).
    """

    labeler: str = "chexpert"
    label_policy: str | Mapping[str, str] | None = None
    views: Sequence[str] | None = None
    split: str = "official"
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.labeler not in LABELERS:
            raise ValueError(f"labeler {self.labeler!r}: expected one of {LABELERS}")
        if self.split not in SPLIT_METHODS:
            raise ValueError(f"split {self.split!r}: expected one of {SPLIT_METHODS}")
        if isinstance(self.label_policy, str):
            policy = dict.fromkeys(FINDINGS, self.label_policy)
        else:
            policy = dict(self.label_policy or {})
        unknown = sorted(set(policy) - set(FINDINGS))
        if unknown:
            raise ValueError(f"label_policy for unknown finding(s) {unknown}: expected {FINDINGS}")
        for finding, name in policy.items():
            if name not in LABEL_POLICIES:
                raise ValueError(
                    f"label_policy {finding}={name!r}: expected one of {LABEL_POLICIES}")
        object.__setattr__(self, "label_policy", {f: policy.get(f, "drop") for f in FINDINGS})
        if self.views is not None:
            if isinstance(self.views, str) or not self.views:
                raise ValueError(f"views {self.views!r}: expected a non-empty list such as "
                                 "['PA', 'AP'], or None for all views")
            object.__setattr__(self, "views", tuple(str(v).upper() for v in self.views))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (results.json, W&B config); also valid keyword arguments."""
        options = asdict(self)
        options["views"] = None if self.views is None else list(self.views)
        return options


def apply_label_policy(labels: pd.DataFrame, policy: Mapping[str, str],
                       dropped: dict[str, int]) -> pd.DataFrame:
    """Apply each finding's policy to raw labels (1, 0, -1 uncertain, NaN blank).

    ``labels`` has one column per finding. Findings are processed in :data:`FINDINGS` order;
    images dropped by a finding's uncertain or blank value are counted once, under
    ``{finding}_uncertain`` / ``{finding}_blank`` in ``dropped`` (always set, 0 if none).
    Raises ValueError on any other raw value.
    """
    for finding in FINDINGS:
        values = labels[finding]
        present = values.dropna()
        unexpected = present[~present.isin([0.0, 1.0, UNCERTAIN])]
        if len(unexpected):
            raise ValueError(f"{finding} labels must be 1, 0, -1 or blank, found "
                             f"{sorted(float(v) for v in unexpected.unique())}")
        uncertain, blank = values == UNCERTAIN, values.isna()
        rule = policy[finding]
        dropped[f"{finding}_uncertain"] = int(uncertain.sum()) if rule == "drop" else 0
        dropped[f"{finding}_blank"] = int(blank.sum()) if rule == "drop" else 0
        if rule == "drop":
            labels = labels[~(uncertain | blank)]
        else:
            if_uncertain, if_blank = RELABEL[rule]
            labels = labels.assign(**{finding: values.mask(uncertain, if_uncertain)
                                      .mask(blank, if_blank)})
    return labels


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


def _policy_pair(text: str) -> tuple[str, str]:
    finding, sep, name = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FINDING=POLICY")
    return finding, name


def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, CohortOptions]:
    parser = argparse.ArgumentParser(prog=program_name("cxr_lightning.data.cohort"),
                                     description=plain(__doc__.split("\n\n")[0]),
                                     formatter_class=HelpFormatter)
    parser.add_argument("--root", type=Path, required=True,
                        help="MIMIC-CXR directory holding files/ (data.root, MIMIC_CXR_ROOT)")
    parser.add_argument("--labels-root", type=Path, default=None,
                        help="directory holding the mimic-cxr-2.0.0-*.csv.gz tables (default: "
                             "--root if it holds them, else the sibling MIMIC-CXR-JPG project)")
    parser.add_argument("--labeler", choices=LABELERS, default="chexpert",
                        help="which label table (data.labeler)")
    parser.add_argument("--policy", nargs="+", type=_policy_pair, default=[],
                        metavar="FINDING=POLICY",
                        help=f"per finding, one of {LABEL_POLICIES} (default drop)")
    parser.add_argument("--views", nargs="+", default=None, help="e.g. PA AP (default: all)")
    parser.add_argument("--split", choices=SPLIT_METHODS, default="official",
                        help="train/val/test split (data.split)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of a random split (data.split_seed)")
    parser.add_argument("--out", type=Path, default=None, help="save the table as CSV")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    args = parser.parse_args(argv)
    try:
        options = CohortOptions(labeler=args.labeler, label_policy=dict(args.policy),
                                views=args.views, split=args.split, split_seed=args.split_seed)
    except ValueError as error:
        parser.error(str(error))
    return args, options


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: log (and optionally save) the cohort table, print its JSON."""
    # Imported here: the MIMIC adapter imports this module for the options and label policies.
    from cxr_lightning.data.mimic import build_mimic_manifest

    args, options = _parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    manifest, report = build_mimic_manifest(args.root, labels_root=args.labels_root,
                                            **options.to_dict())
    summary = cohort_summary(manifest, report)
    log.info("Cohort of %s with %s:\n%s", args.root, options.to_dict(), summary.to_string())
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary.to_csv(args.out)
        log.info("Saved the cohort table to %s", args.out)
    counts = asdict(report) | {"table": cohort_table(manifest).to_dict(orient="index")}
    sys.stdout.write(json.dumps(counts) + "\n")


if __name__ == "__main__":
    raise SystemExit(run_command(main))

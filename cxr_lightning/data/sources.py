"""Every data source's adapter behind one call: ``data.source`` -> (manifest, cohort report)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from cxr_lightning.data.chexpert import build_chexpert_manifest
from cxr_lightning.data.manifest import CohortReport
from cxr_lightning.data.mimic import build_mimic_manifest
from cxr_lightning.data.nih import build_nih_manifest

MIMIC_SUFFIXES: dict[str, str] = {"mimic_cxr": ".dcm", "sample": ".dcm", "mimic_cxr_jpg": ".jpg"}
SOURCES: tuple[str, ...] = (*MIMIC_SUFFIXES, "nih", "chexpert")


def build_manifest(
    source: str,
    root: str | Path,
    labeler: str = "chexpert",
    label_policy: str | Mapping[str, str] | None = None,
    views: Sequence[str] | None = None,
    split: str = "official",
    split_seed: int = 0,
    labels_root: str | Path | None = None,
) -> tuple[pd.DataFrame, CohortReport]:
    """The manifest and cohort report of ``root`` read as ``source`` under the cohort options.

    ``labeler`` and ``labels_root`` (where MIMIC-CXR-JPG's tables are) apply to the MIMIC
    sources only; NIH has no uncertain or blank labels, so a ``label_policy`` there is an error
    rather than silently ignored, and so is a ``labels_root`` for NIH or CheXpert.
    """
    views = None if views is None else list(views)
    if source in MIMIC_SUFFIXES:
        return build_mimic_manifest(root, labeler, source, MIMIC_SUFFIXES[source],
                                    label_policy=label_policy, views=views, split=split,
                                    split_seed=split_seed, labels_root=labels_root)
    if labels_root is not None:
        raise ValueError(f"data.labels_root applies to MIMIC-CXR only, not data.source={source}; "
                         "remove it")
    if source == "chexpert":
        return build_chexpert_manifest(root, split, split_seed, views, label_policy, source)
    if source == "nih":
        if label_policy is not None:
            raise ValueError("data.label_policy does not apply to NIH ChestX-ray14: its labels "
                             "have no uncertain or blank values; remove it")
        return build_nih_manifest(root, split, split_seed, views, source)
    raise ValueError(f"data.source={source!r}: expected one of {SOURCES}")

"""The ``mimic_cxr_jpg`` source: MIMIC-CXR-JPG v2.0.0, the same tree and tables as MIMIC-CXR with
``.jpg`` images (already inverted where needed and histogram-equalised); ``root`` holds
``files/`` and, usually, the four ``mimic-cxr-2.0.0-*.csv.gz`` tables
(:mod:`cxr_lightning.data.sources.mimic`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr_lightning.data.manifest import CohortReport
from cxr_lightning.data.sources.mimic import read_mimic
from cxr_lightning.data.sources.options import SourceOptions


def build(root: str | Path, options: SourceOptions) -> tuple[pd.DataFrame, CohortReport]:
    """The cohort of MIMIC-CXR-JPG at ``root``: MIMIC-CXR's rules, ``.jpg`` image paths."""
    return read_mimic(root, options, "mimic_cxr_jpg", ".jpg")

"""Subsets of a predictions table that every metric is also reported on.

- ``{subset}``: every image;
- ``{subset}_discordant``: both labels known and exactly one finding present, (0,1) or (1,0):
  the cases the study's hypothesis is about;
- ``{subset}_concordant``: both labels known and equal, (0,0) or (1,1);
- ``{subset}_view_{VIEW}``: one view position (``AP``, ``PA``, and any other view present; the
  view's characters other than letters and digits become ``_``).

Images without a view are in no view subset. Empty subsets are left out.
"""

from __future__ import annotations

import re

import pandas as pd

from cxr_lightning.findings import FINDINGS

DISCORDANT = "discordant"
CONCORDANT = "concordant"


def both_labels_known(table: pd.DataFrame) -> pd.Series:
    """Images whose labels of both findings are known (not masked)."""
    return table[list(FINDINGS)].notna().all(axis=1)


def discordant_mask(table: pd.DataFrame) -> pd.Series:
    """Images with both labels known and exactly one finding present."""
    first, second = (table[f] for f in FINDINGS)
    return both_labels_known(table) & (first != second)


def concordant_mask(table: pd.DataFrame) -> pd.Series:
    """Images with both labels known and both findings absent or both present."""
    first, second = (table[f] for f in FINDINGS)
    return both_labels_known(table) & (first == second)


def view_key(view: str) -> str:
    """A view position as it appears in a subset name (``AP``; ``LATERAL``; ``AP_AXIAL``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", str(view)).strip("_")


def subset_masks(table: pd.DataFrame, subset: str = "test") -> dict[str, pd.Series]:
    """Stage name -> boolean row mask of ``table`` for the whole set and each subset."""
    masks = {
        subset: pd.Series(True, index=table.index),
        f"{subset}_{DISCORDANT}": discordant_mask(table),
        f"{subset}_{CONCORDANT}": concordant_mask(table),
    }
    if "view" in table.columns:
        keys = table["view"].map(view_key, na_action="ignore")
        for key in sorted(keys.dropna().unique()):
            masks[f"{subset}_view_{key}"] = keys == key
    return {name: mask for name, mask in masks.items() if mask.any()}

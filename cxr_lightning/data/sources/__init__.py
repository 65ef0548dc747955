"""The source registry: ``data.source`` -> the builder that reads a root into the manifest.

Every builder is ``build(root, options) -> (manifest, CohortReport)`` with one
:class:`~cxr_lightning.data.sources.options.SourceOptions`; the DataModule, the cache CLI and
the cohort CLI all read sources through :func:`build_manifest`. A new source is a module with a
``build`` and a line in :data:`SOURCES`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cxr_lightning.data.manifest import CohortReport
from cxr_lightning.data.sources import chexpert, mimic, mimic_jpg, nih
from cxr_lightning.data.sources.options import SourceOptions
from cxr_lightning.errors import BadValueError, MissingFileError

Builder = Callable[[str | Path, SourceOptions], tuple[pd.DataFrame, CohortReport]]

SOURCES: dict[str, Builder] = {
    "mimic_cxr": mimic.build,
    "mimic_cxr_jpg": mimic_jpg.build,
    "sample": mimic.build_sample,
    "nih": nih.build,
    "chexpert": chexpert.build,
}


def check_source(source: str) -> None:
    """Raise a user error naming the registered sources when ``source`` is not one."""
    if source not in SOURCES:
        raise BadValueError(f"data.source={source!r}: expected one of {tuple(SOURCES)}")


def check_root(source: str, root: str | Path, options: SourceOptions) -> None:
    """Raise a user error when ``root`` cannot hold ``source`` under ``options``, reading no
    table (MIMIC: ``files/`` and the tables it needs; another source: a directory), so that a
    mistyped data root is the first thing a launch reports."""
    check_source(source)
    if source in ("mimic_cxr", "mimic_cxr_jpg", "sample"):
        mimic.resolve_layout(root, options.labels_root, mimic.needed_tables(options))
    elif not Path(root).is_dir():
        raise MissingFileError(f"data.root={root} is not a directory: point data.root at the "
                               f"{source} download")


def build_manifest(source: str, root: str | Path,
                   options: SourceOptions | None = None) -> tuple[pd.DataFrame, CohortReport]:
    """The manifest and cohort report of ``root`` read as ``source`` under ``options``
    (default: the study's cohort)."""
    check_source(source)
    return SOURCES[source](root, SourceOptions() if options is None else options)


def every_labelled_image(source: str, labeler: str = "chexpert",
                         labels_root: str | Path | None = None) -> SourceOptions:
    """Options that keep every image of ``source`` with a label row, in every view, uncertain
    and blank labels masked, none dropped for lack of an official split (``random_patient``):
    the images the cache CLI caches, a superset of any cohort the DataModule selects from the
    source. (NIH has no uncertain or blank labels and takes no label policy.)"""
    return SourceOptions(labeler=labeler, labels_root=labels_root, split="random_patient",
                         label_policy=None if source == "nih" else "mask")

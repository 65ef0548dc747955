"""The options every source is read under (:class:`SourceOptions`) and the label policies.

:class:`SourceOptions` records every choice that turns a source's images into the cohort, plus
where MIMIC-CXR's tables are; its :meth:`~SourceOptions.to_dict` (the cohort's choices) goes
into results.json and W&B. Label policies apply per finding to the labelers' raw values (``1``,
``0``, ``-1`` uncertain, blank = not mentioned):

========  ================  ==============  =====================================================
policy    uncertain (-1)    blank           meaning
========  ================  ==============  =====================================================
drop      image dropped     image dropped   the study's cohort: both findings known (default)
zeros     0                 0               U-Zeros (CheXpert)
ones      1                 0               U-Ones (CheXpert): only *uncertain* becomes positive;
                                            blank ("not mentioned") stays negative
mask      NaN               NaN             image kept, finding excluded from loss and metrics
========  ================  ==============  =====================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_lightning.errors import BadValueError
from cxr_lightning.findings import FINDINGS

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
class SourceOptions:
    """Every choice a source is read under; validated and normalised on construction.

    ``labeler`` (MIMIC-CXR's ``chexpert`` or ``negbio`` tables) and ``labels_root`` (where
    MIMIC-CXR-JPG's tables are; None: found from the root) apply to the MIMIC sources only.
    ``label_policy`` is one policy name for both findings or maps a finding to a policy
    (findings left out get ``drop``); it is stored complete. ``views`` (e.g. ``("PA", "AP")``,
    frontal only; None = all) is stored as an upper-case tuple matching the manifest's ``view``
    (``UNKNOWN`` where the source leaves it blank). ``split`` is ``official`` (the source's
    split) or ``random_patient`` (seeded 80/10/10 of the source's patients with
    ``split_seed``).
    """

    labeler: str = "chexpert"
    label_policy: str | Mapping[str, str] | None = None
    views: Sequence[str] | None = None
    split: str = "official"
    split_seed: int = 0
    labels_root: str | Path | None = None

    def __post_init__(self) -> None:
        if self.labeler not in LABELERS:
            raise BadValueError(f"data.labeler={self.labeler!r}: expected one of {LABELERS}")
        if self.split not in SPLIT_METHODS:
            raise BadValueError(f"data.split={self.split!r}: expected one of {SPLIT_METHODS}")
        if isinstance(self.label_policy, str):
            policy = dict.fromkeys(FINDINGS, self.label_policy)
        else:
            policy = dict(self.label_policy or {})
        unknown = sorted(set(policy) - set(FINDINGS))
        if unknown:
            raise BadValueError(
                f"data.label_policy for unknown finding(s) {unknown}: expected {FINDINGS}")
        for finding, name in policy.items():
            if name not in LABEL_POLICIES:
                raise BadValueError(
                    f"data.label_policy {finding}={name!r}: expected one of {LABEL_POLICIES}")
        object.__setattr__(self, "label_policy", {f: policy.get(f, "drop") for f in FINDINGS})
        if self.views is not None:
            if isinstance(self.views, str) or not self.views:
                raise BadValueError(f"data.views={self.views!r}: expected a non-empty list such as "
                                    "['PA', 'AP'], or None for all views")
            object.__setattr__(self, "views", tuple(str(v).upper() for v in self.views))

    def to_dict(self) -> dict[str, Any]:
        """The cohort's choices as a plain JSON-ready dict (results.json, W&B config), without
        ``labels_root`` (where the tables are, not which images are chosen)."""
        options = asdict(self)
        del options["labels_root"]
        options["views"] = None if self.views is None else list(self.views)
        return options

    def only_mimic_options_unset(self, source: str, dataset: str) -> None:
        """Refuse ``labeler`` and ``labels_root``, which only the MIMIC sources read, for
        ``source`` (``dataset`` its name) rather than silently ignore them."""
        if self.labels_root is not None:
            raise BadValueError(f"data.labels_root applies to MIMIC-CXR only, not "
                                f"data.source={source}; remove it")
        if self.labeler != "chexpert":
            raise BadValueError(f"data.labeler={self.labeler} applies to MIMIC-CXR only: "
                                f"{dataset}'s labels come with the dataset; remove it")


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

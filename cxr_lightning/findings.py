"""The two findings, the study's 4-class encoding of their combinations, and marginals."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

FINDINGS: tuple[str, str] = ("edema", "effusion")
"""Findings in their fixed order: every (N, 2) array in the project uses this column order."""

NUM_COMBINATIONS = 4
"""(edema, effusion) -> class: (0,0):0, (0,1):1, (1,0):2, (1,1):3, as in the study."""


def combination_to_class(labels: torch.Tensor) -> torch.Tensor:
    """Map (N, 2) binary (edema, effusion) labels to the study's class index 2*edema + effusion."""
    labels = labels.long()
    return 2 * labels[:, 0] + labels[:, 1]


def class_to_combination(classes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`combination_to_class`: (N,) class indices to (N, 2) labels."""
    classes = classes.long()
    return torch.stack([classes // 2, classes % 2], dim=1)


def marginal_probabilities(class_probabilities: torch.Tensor) -> torch.Tensor:
    """Per-finding marginals of (N, 4) class probabilities: P(edema)=P2+P3, P(effusion)=P1+P3."""
    edema = class_probabilities[:, 2] + class_probabilities[:, 3]
    effusion = class_probabilities[:, 1] + class_probabilities[:, 3]
    return torch.stack([edema, effusion], dim=1)


def mean_of_defined(values: Mapping[str, float | None]) -> tuple[float, list[str]]:
    """The mean of the finite values (NaN when none is) and the keys whose value is undefined
    (NaN or None): e.g. the mean AUROC over the findings whose AUROC exists, when a split holds
    one class of some finding."""
    undefined = [key for key, value in values.items() if value is None or not math.isfinite(value)]
    defined = [float(value) for key, value in values.items() if key not in undefined]
    return (sum(defined) / len(defined) if defined else math.nan), undefined

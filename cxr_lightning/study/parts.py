"""The study's parts, in order, and the ``cxr-train`` overrides of each training part.

The cohort (Table 2 beside the study's), the cache, the baseline
(``experiment=baseline_frozen``), Table 1's schedule (``experiment=exp1_table1``), experiment II
(the formulations over seeds) and the report. On the embedded sample Table 1's schedule is
scaled to a fifth (:data:`SAMPLE_OVERRIDES`) so that ``make study`` fits 20 minutes on two CPU
cores; the report lists the departure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hydra.core.override_parser.overrides_parser import OverridesParser

from cxr_lightning.preset import SAMPLE

PART_NAMES: tuple[str, ...] = ("cohort", "cache", "baseline", "table1", "formulations", "report")
FORMULATIONS = "binary,multilabel,multiclass"
TRAINING_OVERRIDES: dict[str, tuple[str, ...]] = {
    "baseline": ("experiment=baseline_frozen",),
    "table1": ("experiment=exp1_table1",),
    "formulations": (f"formulation={FORMULATIONS}",),
}
"""The training parts' own overrides (experiment II adds ``seed=1,...,N`` before its own, so
that Hydra numbers its jobs seed by seed and a rerun with more seeds reuses the complete ones)."""
SAMPLE_OVERRIDES: dict[str, tuple[str, ...]] = {
    "baseline": ("trainer.max_epochs=40",),
    "table1": ("unfreeze.schedule=[[7,1],[10,1],[14,2]]", "trainer.max_epochs=16"),
}
"""On the sample: the baseline capped at 40 epochs per model (the paper configuration's cap of
a whole run), and Table 1's stages at epochs 7, 10, 14 of 16 (the study's 35, 50, 70 of 80 over
five) with the same meaning on ResNet18's two-block layers: conv5's last block, the rest of conv5,
then conv4 (its two blocks for the study's last three)."""
DEFAULT_SEEDS = {SAMPLE: 1}
"""Experiment II's seeds per preset where not 3 (exp2_formulations'): one on the sample."""


@dataclass(frozen=True)
class Part:
    """One part of the study: its name and, for a training part, its ``cxr-train -m``
    overrides (after the study's common ones)."""

    name: str
    overrides: tuple[str, ...] = ()

    @property
    def trains(self) -> bool:
        """Whether the part is a ``cxr-train`` multirun."""
        return self.name in TRAINING_OVERRIDES


def sweep_size(overrides: list[str] | tuple[str, ...]) -> int:
    """The number of jobs a multirun of ``overrides`` launches (Hydra's own parser)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return math.prod(len(o.value().list) for o in parsed if o.is_sweep_override())


def study_parts(names: list[str] | tuple[str, ...], preset: str, seeds: int) -> list[Part]:
    """The parts ``names`` (in the study's order) for ``preset`` with ``seeds`` seeds."""
    parts = []
    for name in PART_NAMES:
        if name not in names:
            continue
        overrides = (*TRAINING_OVERRIDES.get(name, ()),
                     *(SAMPLE_OVERRIDES.get(name, ()) if preset == SAMPLE else ()))
        if name == "formulations":  # seeds outermost: more seeds later keep the jobs' numbers
            overrides = (f"seed={','.join(str(s) for s in range(1, seeds + 1))}", *overrides)
        parts.append(Part(name, overrides))
    return parts


def default_seeds(preset: str) -> int:
    """Experiment II's seeds when ``--seeds`` is not given."""
    return DEFAULT_SEEDS.get(preset, 3)

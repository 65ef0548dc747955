"""The three problem formulations: how many outputs, which loss, and logits -> per-finding probs.

A formulation is a plain object, not a module: the shared :class:`CXRClassifier` owns the network
and asks its formulation for the head width, the loss and the probabilities. A *training plan*
(:class:`FormulationPlan`) lists the models one job trains: ``binary`` is two single-finding
models, ``multilabel`` and ``multiclass`` one model each. Downstream code merges every plan's
predictions into the same (N, 2) per-finding table, so evaluation never branches on it.
:data:`PLANS` names every plan; a new formulation is a class and a plan here, plus its
``conf/formulation/*.yaml``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F  # noqa: N812

from cxr_lightning.errors import ModelMismatchError
from cxr_lightning.findings import (
    FINDINGS,
    NUM_COMBINATIONS,
    class_to_combination,
    combination_to_class,
    marginal_probabilities,
)


class Formulation(ABC):
    """One model's output layout, loss and conversion to per-finding probabilities."""

    findings: tuple[str, ...]
    """The findings this model predicts, in :data:`FINDINGS` order."""
    plan_name: ClassVar[str]
    """The name of the plan (in :data:`PLANS`) whose models are of this class."""

    @property
    @abstractmethod
    def num_outputs(self) -> int:
        """Width of the classification head."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss for a batch. ``labels`` is (N, 2) float in FINDINGS order, NaN where masked."""

    @abstractmethod
    def finding_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, len(self.findings)) float32 probability of each of this model's findings, whatever
        the logits' precision (bf16 would tie every probability above ~0.998 at 1.0)."""

    def fit_to_training_labels(self, labels: torch.Tensor) -> None:  # noqa: B027
        """Adapt to the training split's (N, 2) labels (class weights); default: nothing."""

    @property
    def finding_columns(self) -> list[int]:
        """Column indices of this model's findings in the (N, 2) label table."""
        return [FINDINGS.index(f) for f in self.findings]


def _masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over the entries whose target is known (not NaN); 0 when none is.

    Masked by multiplication, not boolean indexing: no data-dependent shape, so nothing waits
    for the device (see :mod:`tests.test_no_sync`). Computed in float32 whatever the logits'
    precision.
    """
    logits, targets = logits.float(), targets.float()
    known = ~torch.isnan(targets)
    losses = F.binary_cross_entropy_with_logits(logits, torch.where(known, targets, 0.0),
                                                reduction="none")
    return (losses * known).sum() / known.sum().clamp(min=1)


class BinaryFormulation(Formulation):
    """One finding, one sigmoid output, BCE (the study's formulation (a), one model per finding)."""

    plan_name = "binary"

    def __init__(self, finding: str) -> None:
        if finding not in FINDINGS:
            raise ValueError(f"unknown finding {finding!r}; expected one of {FINDINGS}")
        self.findings = (finding,)

    @property
    def num_outputs(self) -> int:
        return 1

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        column = self.finding_columns[0]  # a slice: a list index would be copied to the device
        return _masked_bce(logits, labels[:, column : column + 1])

    def finding_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())


class MultilabelFormulation(Formulation):
    """Both findings, two sigmoid outputs, BCE (formulation (b))."""

    findings = FINDINGS
    plan_name = "multilabel"

    @property
    def num_outputs(self) -> int:
        return len(FINDINGS)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _masked_bce(logits, labels)

    def finding_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())


class MulticlassFormulation(Formulation):
    """4-way softmax over (edema, effusion) combinations, class-weighted CE (formulation (c)).

    Class weights are N / (4 * n_c) from the training split's fully labelled rows (inverse
    frequency, mean 1 under the training distribution). A row with one masked finding has two
    compatible classes and its loss is the marginal likelihood ``-log(sum of their
    probabilities)``, e.g. edema=1, effusion masked: ``-log(p2 + p3)``; a row with both masked
    says nothing and is left out. A row's weight is the mean of its compatible classes' weights,
    and the batch loss is ``sum(w_i * nll_i) / sum(w_i)`` like torch's weighted cross-entropy,
    which it equals exactly when every row is fully labelled.
    """

    findings = FINDINGS
    plan_name = "multiclass"

    def __init__(self) -> None:
        self.class_weights: torch.Tensor | None = None

    @property
    def num_outputs(self) -> int:
        return NUM_COMBINATIONS

    def fit_to_training_labels(self, labels: torch.Tensor) -> None:
        self.class_weights = inverse_frequency_weights(labels)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Rows are left out by a zero weight, not by indexing (no host-device sync); a batch
        without an informative row has loss 0."""
        logits = logits.float()  # loss and weights in float32 under any precision
        compatible = compatible_classes(labels)
        informative = (~compatible.all(dim=1)).to(logits.dtype)
        log_p = torch.log_softmax(logits, dim=1)
        nll = -torch.logsumexp(log_p.masked_fill(~compatible, float("-inf")), dim=1)
        if self.class_weights is None:
            weights = informative
        else:
            if self.class_weights.device != logits.device:  # moved once, not every step
                self.class_weights = self.class_weights.to(logits.device)
            weights = informative * ((compatible.to(logits.dtype) @ self.class_weights)
                                     / compatible.sum(dim=1))
        return (weights * nll).sum() / weights.sum().clamp(min=torch.finfo(weights.dtype).tiny)

    def finding_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return marginal_probabilities(torch.softmax(logits.float(), dim=1))


def compatible_classes(labels: torch.Tensor) -> torch.Tensor:
    """(N, 4) bool: the combinations consistent with (N, 2) labels, a NaN matching 0 and 1."""
    combinations = class_to_combination(torch.arange(NUM_COMBINATIONS, device=labels.device))
    matches = labels[:, None, :] == combinations[None].to(labels)
    return (matches | torch.isnan(labels)[:, None, :]).all(dim=2)


def inverse_frequency_weights(labels: torch.Tensor) -> torch.Tensor:
    """Class weights N / (4 * n_c) over the fully labelled rows of (N, 2) labels.

    Raises ValueError naming the empty class when a combination is absent from the training split.
    """
    known = labels[~torch.isnan(labels).any(dim=1)]
    counts = torch.bincount(combination_to_class(known), minlength=NUM_COMBINATIONS).double()
    if (counts == 0).any():
        empty = [tuple(int(v) for v in divmod(c, 2)) for c in range(NUM_COMBINATIONS)
                 if counts[c] == 0]
        raise ValueError(
            f"the training split has no image with (edema, effusion) = {empty}; the multiclass "
            "formulation needs every combination (use a larger cohort or another formulation)"
        )
    return (counts.sum() / (NUM_COMBINATIONS * counts)).float()


@dataclass
class FormulationPlan:
    """What one job trains: a named list of models (formulations) whose findings don't overlap."""

    name: str
    members: list[Formulation] = field(default_factory=list)

    def __post_init__(self) -> None:
        covered = [f for member in self.members for f in member.findings]
        if sorted(covered) != sorted(FINDINGS):
            raise ValueError(
                f"formulation {self.name!r} must predict each of {FINDINGS} exactly once, "
                f"its models predict {covered}"
            )

    def member_name(self, member: Formulation) -> str:
        """Stable name of a member model: the plan name, plus the finding when it has several."""
        if len(self.members) == 1:
            return self.name
        return f"{self.name}-{'-'.join(member.findings)}"


def binary_plan() -> FormulationPlan:
    """Formulation (a): two separate single-finding models, trained one after the other."""
    return FormulationPlan("binary", [BinaryFormulation(f) for f in FINDINGS])


def multilabel_plan() -> FormulationPlan:
    """Formulation (b): one model with two sigmoid outputs."""
    return FormulationPlan("multilabel", [MultilabelFormulation()])


def multiclass_plan() -> FormulationPlan:
    """Formulation (c): one model with a 4-way softmax over the label combinations."""
    return FormulationPlan("multiclass", [MulticlassFormulation()])


PLANS: dict[str, Callable[[], FormulationPlan]] = {
    "binary": binary_plan,
    "multilabel": multilabel_plan,
    "multiclass": multiclass_plan,
}
"""Formulation name -> its plan (the same factories as conf/formulation/*.yaml)."""


def plan_for(formulation: str) -> FormulationPlan:
    """The training plan of a formulation name; a clear error for an unknown one."""
    if formulation not in PLANS:
        raise ModelMismatchError(
            f"unknown formulation {formulation!r}; this code knows {', '.join(PLANS)}")
    return PLANS[formulation]()

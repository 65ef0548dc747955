"""The models of one formulation as a single network: normalised images -> (N, 2) probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cxr_lightning.findings import FINDINGS
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import Formulation


class FindingProbabilities(nn.Module):
    """Every member model of a formulation, output as per-finding probabilities.

    Input: the normalised float batch (N, C, H, W) that training feeds the network
    (:meth:`~cxr_lightning.data.preprocess.Preprocessing.normalise` of the cached uint8 images).
    Output: (N, 2) probabilities in :data:`FINDINGS` order, each finding from the member
    that predicts it (binary: one model per finding; multiclass: the marginals).

    A plain module holding each member's backbone and head (shared, not copied), not the
    LightningModules, so that it traces and exports like any torch network.
    """

    def __init__(self, members: Sequence[CXRClassifier]) -> None:
        super().__init__()
        self.backbones = nn.ModuleList(member.backbone for member in members)
        self.heads = nn.ModuleList(member.head for member in members)
        self.formulations = [member.formulation for member in members]
        produced = [f for formulation in self.formulations for f in formulation.findings]
        if sorted(produced) != sorted(FINDINGS):
            raise ValueError(f"the members predict {produced}; expected each of {FINDINGS} once")
        self.order = [produced.index(f) for f in FINDINGS]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = [_probabilities(backbone, head, formulation, images)
                   for backbone, head, formulation
                   in zip(self.backbones, self.heads, self.formulations, strict=True)]
        return torch.cat(outputs, dim=1)[:, self.order]

    def members(self) -> list[tuple[MemberProbabilities, tuple[str, ...]]]:
        """Each member as its own network, with the findings (its output columns) it predicts."""
        return [(MemberProbabilities(backbone, head, formulation), tuple(formulation.findings))
                for backbone, head, formulation
                in zip(self.backbones, self.heads, self.formulations, strict=True)]


class MemberProbabilities(nn.Module):
    """One member model: normalised images -> (N, k) probabilities of its k findings.

    Shares the backbone and head (not copied). Both networks take the logits in float32
    before the sigmoid/softmax, so that under bf16 autocast only the layers run in bf16, not
    the probabilities (a no-op in float32).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, formulation: Formulation) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.formulation = formulation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _probabilities(self.backbone, self.head, self.formulation, images)


def _probabilities(backbone: nn.Module, head: nn.Module, formulation: Formulation,
                   images: torch.Tensor) -> torch.Tensor:
    """A member's finding probabilities, from its logits in float32."""
    return formulation.finding_probabilities(head(backbone(images)).float())

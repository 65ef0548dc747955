"""The models of one formulation as a single network: normalised images -> (N, 2) probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cxr_lightning.findings import FINDINGS
from cxr_lightning.models.classifier import CXRClassifier


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
        outputs = [formulation.finding_probabilities(head(backbone(images)))
                   for backbone, head, formulation
                   in zip(self.backbones, self.heads, self.formulations, strict=True)]
        return torch.cat(outputs, dim=1)[:, self.order]

    def backbone_for(self, finding: str) -> nn.Module:
        """The backbone of the member model that predicts ``finding``."""
        member = next(i for i, formulation in enumerate(self.formulations)
                      if finding in formulation.findings)
        return self.backbones[member]

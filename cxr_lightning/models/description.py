"""What a Lightning checkpoint of :class:`~cxr_lightning.models.classifier.CXRClassifier`
says about itself: formulation, findings, backbone, preprocessing and code version.

:meth:`CXRClassifier.on_save_checkpoint` writes it under :data:`CHECKPOINT_METADATA_KEY`;
:func:`cxr_lightning.inference.bundle.load_model` reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.models.formulations import Formulation
from cxr_lightning.provenance import code_version

CHECKPOINT_METADATA_KEY = "cxr_lightning"
"""Key of the description :class:`CXRClassifier` adds to its Lightning checkpoints."""


def checkpoint_description(member: Formulation, hparams: Mapping[str, Any],
                           preprocessing: Preprocessing | None) -> dict[str, Any]:
    """The formulation (plan) name, the member's findings, the backbone, the preprocessing
    record (None when the model was trained without one) and the code version."""
    return {
        "formulation": member.plan_name,
        "findings": list(member.findings),
        "backbone": hparams["backbone"],
        "preprocessing": None if preprocessing is None else preprocessing.record(),
        "code_version": code_version(),
    }

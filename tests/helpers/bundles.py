"""Helpers shared by the inference tests (test_bundle, test_predict, test_heatmaps,
test_export): small random-init models saved as a model.pt, and a by-hand reference of the
per-finding probabilities. Holds no test itself."""

from __future__ import annotations

from pathlib import Path

import torch

from cxr_lightning.data.datamodule import CXRDataModule
from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.inference.bundle import save_bundle
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import plan_for

SMALL = Preprocessing(32)


def random_models(formulation: str, backbone: str = "resnet18", seed: int = 0,
                  in_channels: int = 3) -> list[CXRClassifier]:
    """The formulation's member models, random init (no download), in eval mode."""
    torch.manual_seed(seed)
    return [CXRClassifier(member, backbone=backbone, weights="none",
                          in_channels=in_channels).eval()
            for member in plan_for(formulation).members]


def saved_model(directory: Path, formulation: str, preprocessing: Preprocessing = SMALL,
                **kwargs) -> tuple[Path, list[CXRClassifier]]:
    """``directory/model.pt`` of random models of ``formulation`` taking the preprocessing's
    channels, and those models."""
    models = random_models(formulation, in_channels=preprocessing.channels)
    path = save_bundle(directory / f"{formulation}.pt", plan=plan_for(formulation),
                       models=models, preprocessing=preprocessing, **kwargs)
    return path, models


def hand_probabilities(formulation: str, models: list[CXRClassifier],
                       images: torch.Tensor) -> torch.Tensor:
    """(N, 2) P(edema), P(effusion) computed by hand from the models' logits: sigmoid per
    finding (binary: edema from the first model, effusion from the second), or the multiclass
    softmax summed over the classes 2*edema + effusion that contain the finding."""
    with torch.no_grad():
        logits = [model.head(model.backbone(images)) for model in models]
    if formulation == "binary":
        return torch.cat([torch.sigmoid(logits[0]), torch.sigmoid(logits[1])], dim=1)
    if formulation == "multilabel":
        return torch.sigmoid(logits[0])
    p = torch.softmax(logits[0].double(), dim=1)
    return torch.stack([p[:, 2] + p[:, 3], p[:, 1] + p[:, 3]], dim=1).float()


def sample_datamodule(small_sample: Path, **options) -> CXRDataModule:
    """CXRDataModule over the session's generated sample at 32 px, prepared; its cache lives
    beside the sample, so the test modules that use it build it once."""
    datamodule = CXRDataModule(root=str(small_sample), source="sample", image_size=32,
                               batch_size=8, num_workers=0,
                               cache_dir=str(small_sample.parent / "cache"), cache_workers=1,
                               augment=False, **options)
    datamodule.prepare_data()
    return datamodule

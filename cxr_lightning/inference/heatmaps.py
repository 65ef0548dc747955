"""Grad-CAM heatmaps per image and finding (the ``grad-cam`` package), over the original image.

* **Target.** Each finding's probability as the network reports it (a column of
  :class:`~cxr_lightning.inference.network.FindingProbabilities`):

  * binary / multilabel: ``sigmoid(logit)``. This gives the same map as the logit: the
    gradient of ``sigmoid(z)`` is the gradient of ``z`` times one positive number per image,
    which scales every channel weight alike and is removed by the per-image min-max scaling.
  * multiclass: the finding's **marginal probability**, the sum of its two classes' softmax
    probabilities (edema ``P2 + P3``, effusion ``P1 + P3``), i.e. what predictions.csv
    reports. Not the sum of logits: softmax logits are defined only up to a shared constant,
    so their sum is not a quantity the model predicts.

* **Layer.** The backbone's last block: ResNet ``layer4[-1]``; DenseNet ``features.norm5``
  (the last dense block's output after its final BatchNorm). In the binary formulation each
  finding's map comes from the layer of the model that predicts it.
* **Map.** pytorch-grad-cam's ``GradCAM``: ReLU of the gradient-weighted activations,
  min-max scaled to [0, 1] per image, upsampled bilinearly to the input square and scaled to
  [0, 1] again (a map with no positive evidence stays all 0, and is logged); then cut
  back to the original geometry (:meth:`Preprocessing.to_original_geometry
  <cxr_lightning.data.preprocess.Preprocessing.to_original_geometry>`)
  and drawn over the decoded original with ``show_cam_on_image`` (JET colormap, half weight).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision import models

from cxr_lightning.findings import FINDINGS
from cxr_lightning.inference.network import FindingProbabilities

log = logging.getLogger(__name__)

PNG_COMPRESSION = 1
"""zlib level of the overlay PNGs: level 1 wrote a 1024 px overlay 3x faster than Pillow's
default 6 (36 vs 114 ms), the file 1.3x larger."""


def gradcam_layer(backbone: nn.Module) -> nn.Module:
    """The backbone's last block, whose activations Grad-CAM weighs (see module doc)."""
    if isinstance(backbone, models.ResNet):
        return backbone.layer4[-1]
    if isinstance(backbone, models.DenseNet):
        return backbone.features.norm5
    raise TypeError(f"heatmaps support torchvision ResNet and DenseNet backbones, not "
                    f"{type(backbone).__name__}")


def finding_heatmaps(network: FindingProbabilities, images: torch.Tensor) -> np.ndarray:
    """Grad-CAM maps (N, 2, H, W) in [0, 1] of normalised images (N, C, H, W), per finding in
    :data:`FINDINGS` order.

    One forward and one backward per member model for the whole batch and every finding it
    predicts: the batch is repeated once per finding (k*N images) with one target per copy,
    so each copy's gradients are those of its own finding (Grad-CAM weighs each image by its
    own gradients: batching changes no map).
    """
    count = len(images)
    maps = np.zeros((count, len(FINDINGS), *images.shape[-2:]), dtype=np.float32)
    for member, findings in network.members():
        cam = GradCAM(model=member, target_layers=[gradcam_layer(member.backbone)])
        targets = [ClassifierOutputTarget(column)
                   for column in range(len(findings)) for _ in range(count)]
        try:
            with torch.enable_grad():
                # the graph hangs off the input: with frozen weights (ModelBundle.network),
                # backward computes activation gradients only, no weight gradients
                inputs = images.detach().repeat(len(findings), 1, 1, 1).requires_grad_(True)
                member_maps = cam(input_tensor=inputs, targets=targets)
        finally:
            cam.activations_and_grads.release()
        for column, finding in enumerate(findings):
            maps[:, FINDINGS.index(finding)] = member_maps[column * count:(column + 1) * count]
    return maps


def overlay(original: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3): the grey uint8 ``original`` (H, W) under the JET-coloured
    ``heatmap`` (H, W) in [0, 1], half and half."""
    grey = np.repeat(original[..., None].astype(np.float32) / 255.0, 3, axis=2)
    return show_cam_on_image(grey, np.clip(heatmap, 0.0, 1.0), use_rgb=True, image_weight=0.5)


def write_overlay(path: Path, original: np.ndarray, heatmap: np.ndarray) -> Path:
    """Save :func:`overlay` as a PNG; warn when the map is constant (no evidence found)."""
    if float(heatmap.max()) == float(heatmap.min()):
        log.warning("%s: the Grad-CAM map is constant (the gradients found no positive "
                    "evidence for the finding)", path)
    Image.fromarray(overlay(original, heatmap)).save(path, compress_level=PNG_COMPRESSION)
    return path

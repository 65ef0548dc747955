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
* **Figure.** The overlay keeps the original's pixels (not resampled) under a title strip
  naming the finding and its predicted probability, beside a colour bar of the same JET
  colours (matplotlib, Agg canvas); the PNG's ``Title`` text says the same.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from PIL import Image
from PIL.PngImagePlugin import PngInfo
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
DPI = 100
JET = ListedColormap(cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None],
                                       cv2.COLORMAP_JET)[:, 0, ::-1] / 255.0, name="opencv_jet")
"""OpenCV's JET, which ``show_cam_on_image`` colours the maps with, for the colour bar."""


def margins(shape: tuple[int, int]) -> tuple[int, int]:
    """(title strip height, colour bar strip width) in pixels of an overlay of an original of
    ``shape`` (H, W): about 4% and 12% of it, at least 24 and 90 px."""
    height, width = shape
    return max(24, height // 25), max(90, width // 8)


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


def overlay_title(finding: str, probability: float) -> str:
    """An overlay's title: the finding and the probability the model gives it."""
    return f"{finding}: probability {probability:.3f}"


def _drawn(width: int, height: int) -> tuple[Figure, FigureCanvasAgg]:
    """A white matplotlib figure of ``width`` x ``height`` pixels on an Agg canvas."""
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    return figure, FigureCanvasAgg(figure)


def _pixels(canvas: FigureCanvasAgg) -> np.ndarray:
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def annotated_overlay(original: np.ndarray, heatmap: np.ndarray, title: str) -> np.ndarray:
    """RGB uint8 (t + H, W + b, 3): :func:`overlay` at its own pixels in the bottom-left
    corner, ``title`` in the strip of height t above it, the colour bar (Grad-CAM 0 to 1, the
    overlay's JET) in the strip of width b on its right (:func:`margins`). The strips are
    drawn apart, so matplotlib never handles the full-size image."""
    height, width = original.shape
    title_height, bar_width = margins(original.shape)
    points = 72 / DPI
    figure, canvas = _drawn(width + bar_width, title_height)
    figure.text(4 / (width + bar_width), 0.5, title, va="center", ha="left",
                fontsize=0.6 * title_height * points)
    strip = _pixels(canvas)
    figure, canvas = _drawn(bar_width, height)
    bar = figure.add_axes((0.12, 0.05, 0.18, 0.9))
    colour_bar = figure.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=JET), cax=bar)
    label_size = max(6.0, 0.12 * bar_width * points)
    colour_bar.ax.tick_params(labelsize=label_size)
    colour_bar.set_label("Grad-CAM (relative)", fontsize=label_size)
    return np.concatenate([strip, np.concatenate(
        [overlay(original, heatmap), _pixels(canvas)], axis=1)], axis=0)


def write_overlay(path: Path, original: np.ndarray, heatmap: np.ndarray, finding: str,
                  probability: float) -> Path:
    """Save :func:`annotated_overlay` as a PNG (its title also as the PNG's ``Title`` text);
    warn when the map is constant (no evidence found)."""
    if float(heatmap.max()) == float(heatmap.min()):
        log.warning("%s: the Grad-CAM map is constant (the gradients found no positive "
                    "evidence for the finding)", path)
    title = overlay_title(finding, probability)
    text = PngInfo()
    text.add_text("Title", title)
    Image.fromarray(annotated_overlay(original, heatmap, title)).save(
        path, compress_level=PNG_COMPRESSION, pnginfo=text)
    return path

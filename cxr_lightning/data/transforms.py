"""albumentations pipelines: light augmentation for training, ImageNet normalisation for all."""

from __future__ import annotations

import albumentations as A  # noqa: N812
import numpy as np
import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def training_augmentation() -> A.Compose:
    """Light, anatomy-preserving augmentation: small shifts, scale, rotation, exposure.

    No horizontal flip: laterality (heart on the left) is real anatomy in chest radiographs.
    """
    return A.Compose([
        A.Affine(scale=(0.93, 1.07), translate_percent=(-0.04, 0.04), rotate=(-7, 7), p=0.8,
                 border_mode=0),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
    ])


def to_network_input(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) grey -> float (3, H, W): grey replicated to 3 channels, ImageNet-normalised."""
    grey = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (grey.unsqueeze(0).expand(3, -1, -1) - mean) / std

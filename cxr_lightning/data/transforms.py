"""albumentations pipelines for training, and the ImageNet normalisation of every batch."""

from __future__ import annotations

import albumentations as A  # noqa: N812
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


def normalise_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) grey -> float (B, 3, H, W): grey replicated to 3 channels, then
    ImageNet-normalised, ``(x / 255 - mean) / std``, on whatever device ``images`` is on."""
    grey = images.unsqueeze(1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (grey - mean) / std

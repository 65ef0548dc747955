"""albumentations pipelines for training, and the ImageNet normalisation of every batch."""

from __future__ import annotations

import random
from functools import cache

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


def augment(augmentation: A.Compose, image: np.ndarray, seed: int, epoch: int,
            index: int) -> np.ndarray:
    """``image`` augmented with random draws that depend on ``(seed, epoch, index)`` alone.

    albumentations 2.x ``Compose`` draws from its own generators, which ``seed_everything`` does
    not touch. Seeding them per image and epoch, here, makes the augmentation of an image at an
    epoch the same whatever the DataLoader worker, the number of workers, or the process (a
    resumed run) that draws it. One NumPy and one Python generator are shared by every
    transform of the pipeline (``Compose(seed=...)`` would give each transform its own copy of
    one stream, so their draws would be correlated).
    """
    numpy_seed, python_seed = np.random.SeedSequence([seed, epoch, index]).spawn(2)
    augmentation.set_random_state(np.random.default_rng(numpy_seed),
                                  random.Random(int(python_seed.generate_state(1)[0])))
    return augmentation(image=image)["image"]


GREY_MEAN: float = sum(IMAGENET_MEAN) / 3
GREY_STD: float = sum(IMAGENET_STD) / 3


def normalise_batch(images: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """uint8 (B, H, W) grey -> float (B, channels, H, W), ``(x / 255 - mean) / std``, on whatever
    device ``images`` is on.

    ``channels=3``: grey replicated to 3 channels, ImageNet's per-channel mean and std (the
    study's input). ``channels=1``: one channel, the mean of ImageNet's means and stds, for a
    backbone whose stem was collapsed to 1 channel (``model.in_channels=1``); it equals the
    3-channel backbone on the grey image replicated and normalised with that one mean and std.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    grey = images.unsqueeze(1).float().div_(255.0)
    if channels == 1:
        return (grey - GREY_MEAN) / GREY_STD
    mean, std = _imagenet_constants(images.device)
    return (grey - mean) / std


@cache
def _imagenet_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std as (1, 3, 1, 1) tensors on ``device``, created once per device
    (creating them per batch is a host-to-device copy, which waits for the device). Never
    inference tensors, so a first call under ``torch.inference_mode`` does not taint training."""
    shape = (1, 3, 1, 1)
    with torch.inference_mode(False):
        return (torch.tensor(IMAGENET_MEAN, device=device).view(shape),
                torch.tensor(IMAGENET_STD, device=device).view(shape))

"""albumentations pipelines for training (normalisation: :mod:`cxr_lightning.data.preprocess`)."""

from __future__ import annotations

import random

import albumentations as A  # noqa: N812
import numpy as np


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

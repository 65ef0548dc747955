"""What makes a trained model self-describing: formulation, preprocessing and code version.

Used by :mod:`cxr_lightning.inference.bundle` (the job's artefact) and by
:meth:`CXRClassifier.on_save_checkpoint <cxr_lightning.models.classifier.CXRClassifier>`
(Lightning ``.ckpt`` files). Imports nothing from :mod:`cxr_lightning.models.classifier`.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict
from functools import lru_cache
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import torch

from cxr_lightning.data.cache import CACHE_FORMAT_VERSION, CacheSpec
from cxr_lightning.data.transforms import normalise_batch
from cxr_lightning.errors import BadValueError
from cxr_lightning.models.formulations import (
    BinaryFormulation,
    Formulation,
    FormulationPlan,
    MulticlassFormulation,
    MultilabelFormulation,
    binary_plan,
    multiclass_plan,
    multilabel_plan,
)

log = logging.getLogger(__name__)

CHECKPOINT_METADATA_KEY = "cxr_lightning"
"""Key of the metadata :class:`CXRClassifier` adds to its Lightning checkpoints."""

PLANS: dict[str, Callable[[], FormulationPlan]] = {
    "binary": binary_plan,
    "multilabel": multilabel_plan,
    "multiclass": multiclass_plan,
}
"""Formulation name -> its plan (the same factories as conf/formulation/*.yaml)."""

_PLAN_OF_MEMBER: dict[type[Formulation], str] = {
    BinaryFormulation: "binary",
    MultilabelFormulation: "multilabel",
    MulticlassFormulation: "multiclass",
}
_CACHE_SPEC_KEYS = ("image_size", "resize", "interpolation", "histogram_equalization")
_REPOSITORY = Path(__file__).resolve().parents[2]


class ModelMismatchError(BadValueError):
    """A saved model is not what was asked for, or cannot be rebuilt by this code."""


def plan_for(formulation: str) -> FormulationPlan:
    """The training plan of a formulation name; a clear error for an unknown one."""
    if formulation not in PLANS:
        raise ModelMismatchError(
            f"unknown formulation {formulation!r}; this code knows {', '.join(PLANS)}")
    return PLANS[formulation]()


def formulation_of(member: Formulation) -> str:
    """The formulation (plan) name a member model belongs to, e.g. ``binary``."""
    return _PLAN_OF_MEMBER[type(member)]


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The package version and, when run from a git checkout, its commit and dirty flag."""
    try:
        version = package_metadata.version("cxr-lightning")
    except package_metadata.PackageNotFoundError:
        version = None
    return {"package": version, **_git_state()}


def _git_state() -> dict[str, Any]:
    """``git_commit`` (None outside a checkout or without git) and ``git_dirty``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPOSITORY, text=True,
                                capture_output=True, check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=_REPOSITORY, text=True, capture_output=True, check=True,
                                timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}


def normalisation_record(channels: int) -> dict[str, Any]:
    """The per-channel ``(x / 255 - mean) / std`` that :func:`normalise_batch` applies.

    Measured by running the function on black and white pixels, so the record always states
    what the code does rather than repeating its constants.
    """
    probe = normalise_batch(torch.tensor([[[0, 255]]], dtype=torch.uint8), channels)
    black, white = probe[0, :, 0, 0].double(), probe[0, :, 0, 1].double()
    std = 1.0 / (white - black)
    return {"channels": channels, "mean": (-black * std).tolist(), "std": std.tolist()}


def preprocessing_record(spec: CacheSpec, channels: int) -> dict[str, Any]:
    """Everything that turns a file into the network's input: the cache spec's image
    parameters, the cache format version and the normalisation."""
    record = {key: asdict(spec)[key] for key in _CACHE_SPEC_KEYS}
    return {**record, "cache_format_version": spec.format_version,
            "normalisation": normalisation_record(channels)}


def spec_from_record(record: Mapping[str, Any]) -> CacheSpec:
    """The :class:`CacheSpec` a model was trained with; errors if this code preprocesses
    differently (another normalisation or cache format)."""
    missing = [key for key in (*_CACHE_SPEC_KEYS, "normalisation") if key not in record]
    if missing:
        raise ModelMismatchError(f"the model's preprocessing record lacks {missing}")
    stored = record["normalisation"]
    current = normalisation_record(int(stored["channels"]))
    if not all(torch.allclose(torch.tensor(stored[k], dtype=torch.float64),
                              torch.tensor(current[k], dtype=torch.float64), atol=1e-6)
               for k in ("mean", "std")):
        raise ModelMismatchError(
            f"the model was trained with the normalisation {stored}, but this code's "
            f"normalise_batch applies {current}: use the code version the model records")
    version = record.get("cache_format_version")
    if version != CACHE_FORMAT_VERSION:
        log.warning("The model was trained on cache format %s, this code writes format %s: "
                    "its decoding may differ from the model's training images",
                    version, CACHE_FORMAT_VERSION)
    return CacheSpec(**{key: record[key] for key in _CACHE_SPEC_KEYS})


def checkpoint_metadata(member: Formulation, hparams: Mapping[str, Any],
                        spec: CacheSpec | None) -> dict[str, Any]:
    """What :meth:`CXRClassifier.on_save_checkpoint` stores under
    :data:`CHECKPOINT_METADATA_KEY`: formulation, findings, backbone, preprocessing (when the
    trainer's datamodule has a cache spec) and code version."""
    channels = int(hparams.get("in_channels", 3))
    return {
        "formulation": formulation_of(member),
        "findings": list(member.findings),
        "backbone": hparams["backbone"],
        "preprocessing": None if spec is None else preprocessing_record(spec, channels),
        "code_version": code_version(),
    }

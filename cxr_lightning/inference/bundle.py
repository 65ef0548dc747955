"""A job's trained result as one self-describing file, ``model.pt``, and loading it safely.

The file is ``torch.save`` of plain values and tensors only, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs)::

    format            "cxr-lightning-model"
    format_version    1
    formulation       binary | multilabel | multiclass
    backbone          e.g. resnet152
    findings          ["edema", "effusion"]
    members           per model of the formulation (binary: one per finding, in FINDINGS order):
                      {name, findings, hparams (CXRClassifier's), state_dict}
    preprocessing     image_size, resize, interpolation, histogram_equalization,
                      cache_format_version, normalisation {channels, mean, std}: the record of
                      the training's cxr_lightning.data.preprocess.Preprocessing
    thresholds        {finding: float}: a probability > its threshold is labelled 1, the
                      project's rule (torchmetrics', and that of the validation-chosen
                      operating points); 0.5 unless validation-chosen thresholds were given
    threshold_record  how the thresholds were chosen (any JSON value), or null
    code_version      {package, git_commit, git_dirty}
    config            the job's resolved Hydra config, or null

``torch.save`` writes a zip archive whose members carry CRC-32 checksums; :func:`load_model`
checks them before loading (``torch.load`` does not), so a damaged file is refused with
:class:`~cxr_lightning.errors.CorruptFileError`, never used (a truncated one is no zip archive:
``torch.load`` refuses it, :class:`ModelMismatchError`).

:func:`load_model` also reads a Lightning ``.ckpt`` written by :class:`CXRClassifier` (it
carries the same description under ``"cxr_lightning"``) when that one model is the whole
formulation (multilabel, multiclass).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.errors import MissingFileError, ModelMismatchError
from cxr_lightning.evaluation.metrics import THRESHOLD
from cxr_lightning.findings import FINDINGS
from cxr_lightning.inference.network import FindingProbabilities
from cxr_lightning.integrity import atomic_path, verify_zip
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.description import CHECKPOINT_METADATA_KEY
from cxr_lightning.models.formulations import Formulation, FormulationPlan, plan_for
from cxr_lightning.provenance import code_version

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "cxr-lightning-model"
BUNDLE_FORMAT_VERSION = 1


@dataclass
class ModelBundle:
    """A loaded model: its member networks (eval mode, CPU) and everything describing them."""

    source: Path
    formulation: str
    backbone: str
    members: list[CXRClassifier]
    preprocessing_record: dict[str, Any]
    """The saved preprocessing record (module doc), as saved; ``preprocessing`` is made from
    it."""
    thresholds: dict[str, float]
    threshold_record: Any = None
    code_version: dict[str, Any] | None = None
    config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.preprocessing = Preprocessing.from_record(self.preprocessing_record)

    def network(self) -> FindingProbabilities:
        """All members as one network: normalised images -> (N, 2) probabilities; eval mode,
        weights frozen (``requires_grad=False``: prediction and Grad-CAM need no weight
        gradients)."""
        return FindingProbabilities(self.members).eval().requires_grad_(False)


def validate_thresholds(thresholds: Mapping[str, float] | None) -> dict[str, float]:
    """``{finding: threshold}`` for exactly :data:`FINDINGS`, each in [0, 1]; None: 0.5 each."""
    if thresholds is None:
        return {f: THRESHOLD for f in FINDINGS}
    if sorted(thresholds) != sorted(FINDINGS):
        raise ValueError(f"thresholds must give one value per finding {FINDINGS}, got "
                         f"{dict(thresholds)}")
    values = {f: float(thresholds[f]) for f in FINDINGS}
    bad = {f: v for f, v in values.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)}
    if bad:
        raise ValueError(f"thresholds must be probabilities in [0, 1], got {bad}")
    return values


def save_bundle(
    path: str | Path,
    *,
    plan: FormulationPlan,
    models: Sequence[CXRClassifier],
    preprocessing: Preprocessing,
    thresholds: Mapping[str, float] | None = None,
    threshold_record: Any = None,
    config: DictConfig | Mapping[str, Any] | None = None,
) -> Path:
    """Write the formulation's trained ``models`` (one per ``plan`` member, in its order) as one
    self-describing file (atomically). ``preprocessing`` is the training's, ``thresholds``
    the ``{finding: probability}`` cut-offs for labels (default 0.5), ``threshold_record`` how
    they were chosen and ``config`` the job's config, both kept for the record."""
    if len(models) != len(plan.members) or any(
            model.formulation.findings != member.findings
            for model, member in zip(models, plan.members, strict=False)):
        raise ValueError(f"formulation {plan.name!r} needs models for "
                         f"{[m.findings for m in plan.members]}, got "
                         f"{[m.formulation.findings for m in models]}")
    backbones = {model.hparams["backbone"] for model in models}
    channels = {int(model.hparams.get("in_channels", 3)) for model in models}
    if len(backbones) != 1 or channels != {preprocessing.channels}:
        raise ValueError(f"the models of one formulation share a backbone and the "
                         f"preprocessing's {preprocessing.channels} input channel(s), got "
                         f"{backbones} and {channels}")
    record = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "formulation": plan.name,
        "backbone": backbones.pop(),
        "findings": list(FINDINGS),
        "members": [{"name": plan.member_name(member), "findings": list(member.findings),
                     "hparams": _plain(dict(model.hparams)),
                     "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
                    for model, member in zip(models, plan.members, strict=True)],
        "preprocessing": preprocessing.record(),
        "thresholds": validate_thresholds(thresholds),
        "threshold_record": _plain(threshold_record),
        "code_version": code_version(),
        "config": _plain(OmegaConf.to_container(config, resolve=True)
                         if isinstance(config, DictConfig) else config),
    }
    path = Path(path)
    with atomic_path(path) as partial:  # no half file, and no partial one left on a full disk
        torch.save(record, partial)
    log.info("Saved the %s model (%s, %d member(s)) to %s", plan.name, record["backbone"],
             len(models), path)
    return path


def load_model(path: str | Path, formulation: str | None = None,
               backbone: str | None = None) -> ModelBundle:
    """Load a ``model.pt`` (or a single-model Lightning ``.ckpt`` of CXRClassifier) with
    ``torch.load(weights_only=True)``. ``formulation`` / ``backbone``, when given, must match
    the saved model's, else :class:`ModelMismatchError` names both."""
    path = Path(path)
    raw = _load_plain(path)
    if raw.get("format") == BUNDLE_FORMAT:
        bundle = _from_bundle(raw, path)
    elif CHECKPOINT_METADATA_KEY in raw:
        bundle = _from_checkpoint(raw, path)
    elif "state_dict" in raw:
        raise ModelMismatchError(
            f"{path} is a Lightning checkpoint without the cxr_lightning description (written "
            "before it existed, or not by CXRClassifier): use the job's model.pt")
    else:
        raise ModelMismatchError(f"{path} is neither a cxr-lightning model.pt nor a "
                                 "CXRClassifier checkpoint")
    for name, wanted, saved in (("formulation", formulation, bundle.formulation),
                                ("backbone", backbone, bundle.backbone)):
        if wanted is not None and wanted != saved:
            raise ModelMismatchError(
                f"{path} holds a {bundle.formulation} model on a {bundle.backbone} backbone, "
                f"but {name}={wanted} was requested: pass that formulation's model.pt, or drop "
                f"{name}= to use the saved one")
    log.info("Loaded the %s model (%s) from %s", bundle.formulation, bundle.backbone, path)
    return bundle


def classifier_from_checkpoint(path: str | Path,
                               member: Formulation | None = None) -> CXRClassifier:
    """The CXRClassifier of a Lightning ``.ckpt`` (eval mode, CPU), loaded with
    ``weights_only=True``. ``member``: its formulation object; default: the one the
    checkpoint's description names (needs a checkpoint written with the description)."""
    path = Path(path)
    raw = _load_plain(path)
    if member is None:
        member = _checkpoint_member(raw, path)
    return _rebuild(member, raw["hyper_parameters"], raw["state_dict"], path)


def _from_bundle(raw: dict[str, Any], path: Path) -> ModelBundle:
    if raw.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise ModelMismatchError(f"{path}: model format version {raw.get('format_version')}, "
                                 f"this code reads version {BUNDLE_FORMAT_VERSION}")
    plan = plan_for(raw["formulation"])
    stored = raw["members"]
    if [tuple(m["findings"]) for m in stored] != [m.findings for m in plan.members]:
        raise ModelMismatchError(
            f"{path}: its {raw['formulation']} models predict "
            f"{[m['findings'] for m in stored]}, expected {[m.findings for m in plan.members]}")
    members = [_rebuild(member, m["hparams"], m["state_dict"], path)
               for member, m in zip(plan.members, stored, strict=True)]
    return ModelBundle(
        source=path, formulation=raw["formulation"], backbone=raw["backbone"],
        members=members, preprocessing_record=raw["preprocessing"],
        thresholds=validate_thresholds(raw["thresholds"]),
        threshold_record=raw.get("threshold_record"), code_version=raw.get("code_version"),
        config=raw.get("config"))


def _from_checkpoint(raw: dict[str, Any], path: Path) -> ModelBundle:
    described = raw[CHECKPOINT_METADATA_KEY]
    member = _checkpoint_member(raw, path)
    if len(plan_for(described["formulation"]).members) != 1:
        raise ModelMismatchError(
            f"{path} is one model ({described['findings']}) of the {described['formulation']} "
            "formulation, which predicts each finding with its own model: pass the job's "
            "model.pt, which holds all of them")
    if described.get("preprocessing") is None:
        raise ModelMismatchError(f"{path} does not record its preprocessing (trained without "
                                 "a CXRDataModule): use the job's model.pt")
    model = _rebuild(member, raw["hyper_parameters"], raw["state_dict"], path)
    return ModelBundle(
        source=path, formulation=described["formulation"], backbone=described["backbone"],
        members=[model], preprocessing_record=described["preprocessing"],
        thresholds=validate_thresholds(None), code_version=described.get("code_version"))


def _checkpoint_member(raw: dict[str, Any], path: Path) -> Formulation:
    """The formulation object a described Lightning checkpoint's model was trained under."""
    described = raw.get(CHECKPOINT_METADATA_KEY)
    if described is None:
        raise ModelMismatchError(f"{path} has no cxr_lightning description: pass the member "
                                 "formulation explicitly, or use the job's model.pt")
    plan = plan_for(described["formulation"])
    findings = tuple(described["findings"])
    for member in plan.members:
        if member.findings == findings:
            return member
    raise ModelMismatchError(f"{path}: no {plan.name} model predicts {findings}")


def _rebuild(member: Formulation, hparams: Mapping[str, Any],
             state_dict: Mapping[str, torch.Tensor], path: Path) -> CXRClassifier:
    """A CXRClassifier with the saved hyper-parameters (no weight download) and weights."""
    try:
        model = CXRClassifier(member, **{**hparams, "weights": "none"})
    except (TypeError, ValueError) as error:
        raise ModelMismatchError(f"{path}: cannot rebuild its network from {dict(hparams)}: "
                                 f"{error}") from error
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ModelMismatchError(f"{path}: its weights do not fit a {hparams.get('backbone')} "
                                 f"{type(member).__name__}: {error}") from error
    return model.eval()


def _load_plain(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` on CPU, with errors that name the file; the file's
    checksums (:func:`~cxr_lightning.integrity.verify_zip`) are checked first."""
    if not path.is_file():
        raise MissingFileError(f"ckpt={path}: no such file")
    verify_zip(path, "it cannot be used; copy it again from where it was written, or re-run "
                     "the job that wrote it", required=False)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle refusals, truncation, not a torch file: many types
        raise ModelMismatchError(f"{path}: cannot load with torch.load(weights_only=True): "
                                 f"{error}") from error
    if not isinstance(raw, dict):
        raise ModelMismatchError(f"{path} holds a {type(raw).__name__}, not a model")
    return raw


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types (what ``weights_only`` loading accepts)."""
    return json.loads(json.dumps(value))

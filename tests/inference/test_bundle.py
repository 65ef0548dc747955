"""The self-describing model artefact (model.pt) and self-describing Lightning checkpoints.

References: the models' own logits turned into probabilities by hand (test_bundle_support),
plain ``torch.load(weights_only=True)``, ``git rev-parse HEAD`` and the Preprocessing the
test chose.
"""

from __future__ import annotations

import errno
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.errors import CorruptFileError, ModelMismatchError
from cxr_lightning.findings import FINDINGS
from cxr_lightning.inference.bundle import (
    classifier_from_checkpoint,
    load_model,
    save_bundle,
    validate_thresholds,
)
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import multiclass_plan, plan_for
from tests.helpers.bundles import (
    SMALL,
    hand_probabilities,
    random_models,
    sample_datamodule,
    saved_model,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("formulation", ["binary", "multilabel", "multiclass"])
def test_round_trip_predicts_what_the_models_predict(tmp_path, formulation):
    path, models = saved_model(tmp_path, formulation)
    bundle = load_model(path)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loaded = bundle.network()(images)
    torch.testing.assert_close(loaded, hand_probabilities(formulation, models, images),
                               atol=1e-6, rtol=0)
    assert bundle.formulation == formulation and bundle.backbone == "resnet18"
    assert len(bundle.members) == (2 if formulation == "binary" else 1)


def test_file_is_plain_data_and_describes_the_model(tmp_path):
    preprocessing = Preprocessing(48, resize="center_crop", interpolation="linear",
                                  histogram_equalization=True)
    record = {"edema": {"0.5": 0.5, "youden": 0.31}, "effusion": {"0.5": 0.5, "youden": 0.62}}
    path, _ = saved_model(tmp_path, "binary", preprocessing=preprocessing,
                          thresholds={"edema": 0.31, "effusion": 0.62},
                          threshold_record=record, config={"seed": 3, "model": {"lr": 0.01}})
    raw = torch.load(path, weights_only=True)  # no pickled code: plain values and tensors
    assert raw["formulation"] == "binary" and raw["backbone"] == "resnet18"
    assert raw["findings"] == list(FINDINGS)
    assert [m["findings"] for m in raw["members"]] == [["edema"], ["effusion"]]
    assert raw["preprocessing"]["image_size"] == 48
    assert raw["preprocessing"]["resize"] == "center_crop"
    assert raw["preprocessing"]["interpolation"] == "linear"
    assert raw["preprocessing"]["histogram_equalization"] is True
    normalisation = raw["preprocessing"]["normalisation"]
    assert normalisation["channels"] == 3
    assert normalisation["mean"] == pytest.approx([0.485, 0.456, 0.406], abs=1e-6)
    assert normalisation["std"] == pytest.approx([0.229, 0.224, 0.225], abs=1e-6)
    assert raw["thresholds"] == {"edema": 0.31, "effusion": 0.62}
    assert raw["threshold_record"] == record
    assert raw["config"] == {"seed": 3, "model": {"lr": 0.01}}
    assert raw["code_version"]["package"] == "0.1.0"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, text=True,
                          capture_output=True)
    if head.returncode == 0:
        assert raw["code_version"]["git_commit"] == head.stdout.strip()
    bundle = load_model(path)
    assert bundle.preprocessing == preprocessing
    assert bundle.thresholds == {"edema": 0.31, "effusion": 0.62}


def test_mismatched_formulation_or_backbone_fails_clearly(tmp_path):
    path, _ = saved_model(tmp_path, "multiclass")
    with pytest.raises(ModelMismatchError, match=r"multiclass model on a resnet18.*"
                                                 r"formulation=binary was requested"):
        load_model(path, formulation="binary")
    with pytest.raises(ModelMismatchError, match=r"backbone=resnet50 was requested"):
        load_model(path, backbone="resnet50")
    assert load_model(path, formulation="multiclass", backbone="resnet18").formulation == \
        "multiclass"


def test_weights_that_do_not_fit_fail_clearly(tmp_path):
    path, _ = saved_model(tmp_path, "multilabel")
    raw = torch.load(path, weights_only=True)
    raw["members"][0]["hparams"]["backbone"] = "resnet34"  # resnet18 weights, resnet34 claim
    torch.save(raw, tmp_path / "relabelled.pt")
    with pytest.raises(ModelMismatchError, match="do not fit a resnet34"):
        load_model(tmp_path / "relabelled.pt")


def test_a_flipped_bit_in_model_pt_is_refused(tmp_path):
    """torch.load alone would load the flipped weight and predict with it."""
    path, _ = saved_model(tmp_path, "multilabel")
    with zipfile.ZipFile(path) as archive:  # the largest tensor's bytes, found by hand
        member = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    name, extra = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
    data[member.header_offset + 30 + name + extra + member.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=f"{path} is damaged: its member .* checksum"):
        load_model(path)
    path.write_bytes(bytes(data[:len(data) // 2]))  # no longer a zip: torch.load refuses it
    with pytest.raises(ModelMismatchError, match=f"{path}: cannot load with torch.load"):
        load_model(path)


def test_a_full_disk_leaves_no_model_and_no_partial_file(tmp_path, monkeypatch):
    def fill_the_disk(record, path):
        Path(path).write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fill_the_disk)
    with pytest.raises(OSError, match="No space left"):
        saved_model(tmp_path, "multilabel")
    assert list(tmp_path.iterdir()) == []


def test_pickled_objects_are_refused(tmp_path):
    torch.save(random_models("multilabel")[0], tmp_path / "module.pt")  # a pickled module
    with pytest.raises(ModelMismatchError, match="weights_only=True"):
        load_model(tmp_path / "module.pt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(tmp_path / "absent.pt")


@pytest.mark.parametrize(("thresholds", "message"), [
    ({"edema": 0.4}, "one value per finding"),
    ({"edema": 0.4, "effusion": 1.5}, r"in \[0, 1\]"),
    ({"edema": float("nan"), "effusion": 0.5}, r"in \[0, 1\]"),
])
def test_bad_thresholds_are_refused(thresholds, message):
    with pytest.raises(ValueError, match=message):
        validate_thresholds(thresholds)
    assert validate_thresholds(None) == {"edema": 0.5, "effusion": 0.5}


def test_models_must_match_the_plan(tmp_path):
    with pytest.raises(ValueError, match="needs models for"):
        save_bundle(tmp_path / "x.pt", plan=plan_for("binary"),
                    models=random_models("multilabel"), preprocessing=SMALL)


def test_models_must_take_the_preprocessings_channels(tmp_path):
    """A 3-channel model saved with a 1-channel preprocessing would be fed the wrong input."""
    with pytest.raises(ValueError, match="1 input channel"):
        save_bundle(tmp_path / "x.pt", plan=plan_for("multilabel"),
                    models=random_models("multilabel"),
                    preprocessing=Preprocessing(32, channels=1))
    assert not (tmp_path / "x.pt").exists()


@pytest.fixture(scope="module")
def fitted_checkpoints(small_sample, tmp_path_factory):
    """One training step of a multiclass model and of the binary edema model on the generated
    sample at 32 px through CXRDataModule; their Lightning checkpoints."""
    folder = tmp_path_factory.mktemp("ckpt")
    datamodule = sample_datamodule(small_sample)
    paths = {}
    for name, member in (("multiclass", multiclass_plan().members[0]),
                         ("binary-edema", plan_for("binary").members[0])):
        model = CXRClassifier(member, backbone="resnet18", weights="none")
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                             logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, datamodule=datamodule)
        paths[name] = folder / f"{name}.ckpt"
        trainer.save_checkpoint(paths[name])
        paths[f"{name}-model"] = model.eval()
    return paths, datamodule.preprocessing


def test_lightning_checkpoint_is_self_describing(fitted_checkpoints):
    paths, preprocessing = fitted_checkpoints
    raw = torch.load(paths["multiclass"], weights_only=True)
    described = raw["cxr_lightning"]
    assert described["formulation"] == "multiclass"
    assert described["findings"] == list(FINDINGS)
    assert described["backbone"] == "resnet18"
    assert described["preprocessing"]["image_size"] == preprocessing.image_size == 32
    assert described["preprocessing"]["resize"] == preprocessing.resize
    bundle = load_model(paths["multiclass"])
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loaded = bundle.network()(images)
    expected = hand_probabilities("multiclass", [paths["multiclass-model"]], images)
    torch.testing.assert_close(loaded, expected, atol=1e-6, rtol=0)
    assert bundle.preprocessing == preprocessing


def test_one_binary_member_checkpoint_is_not_a_whole_model(fitted_checkpoints, tmp_path):
    paths, preprocessing = fitted_checkpoints
    with pytest.raises(ModelMismatchError, match="pass the job's model.pt"):
        load_model(paths["binary-edema"])
    # what train.py does at the end of a job: both best checkpoints -> one model.pt
    edema = classifier_from_checkpoint(paths["binary-edema"])
    effusion = random_models("binary", seed=5)[1]
    path = save_bundle(tmp_path / "model.pt", plan=plan_for("binary"),
                       models=[edema, effusion], preprocessing=preprocessing)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        loaded = load_model(path).network()(images)
    expected = hand_probabilities("binary", [paths["binary-edema-model"], effusion], images)
    torch.testing.assert_close(loaded, expected, atol=1e-6, rtol=0)


def test_grey_input_model_keeps_its_one_channel_normalisation(tmp_path):
    path, (model,) = saved_model(tmp_path, "multilabel", Preprocessing(32, channels=1))
    bundle = load_model(path)
    assert bundle.preprocessing.channels == 1
    normalisation = bundle.preprocessing_record["normalisation"]
    mean, std = sum((0.485, 0.456, 0.406)) / 3, sum((0.229, 0.224, 0.225)) / 3
    assert normalisation["mean"] == pytest.approx([mean], abs=1e-6)
    assert normalisation["std"] == pytest.approx([std], abs=1e-6)
    images = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(bundle.network()(images),
                                   hand_probabilities("multilabel", [model], images),
                                   atol=1e-6, rtol=0)

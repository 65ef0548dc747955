"""Batch prediction: inputs, cache-identical preprocessing, bad files, labels, the CLI.

References: the training DataModule's own batches (cache + on-device normalisation), the
models' logits turned into probabilities by hand, twin files that must decode alike (an 8-bit
PNG, its 16-bit widening, its grey-replicated RGB copy), and pydicom's own test DICOM.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from pydicom import dcmread
from pydicom.data import get_testdata_file

from cxr_lightning import predict
from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.errors import BadValueError
from cxr_lightning.inference import heatmaps
from cxr_lightning.inference.bundle import load_model
from cxr_lightning.inference.images import InputImages, collate_inputs
from cxr_lightning.inference.inputs import collect_inputs
from cxr_lightning.inference.predictor import PREDICTION_COLUMNS, predict_files, resolve_device
from tests.helpers.bundles import hand_probabilities, sample_datamodule, saved_model

PROBABILITIES = ["edema_prob", "effusion_prob"]
LABELS = ["edema_label", "effusion_label"]


def _grey(shape: tuple[int, int] = (40, 50), seed: int = 0) -> np.ndarray:
    """A smooth 8-bit grey image using both 0 and 255."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    noise = np.random.default_rng(seed).normal(0, 6, shape)
    image = (128 + 100 * np.sin(cols / 6.0) * np.cos(rows / 9.0) + noise).clip(0, 255)
    image = image.astype(np.uint8)
    image.flat[:2] = (0, 255)
    return image


def _write(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


def _dicom_without_pixels(path: Path) -> Path:
    """pydicom's own CT_small.dcm with its Pixel Data element removed."""
    dataset = dcmread(get_testdata_file("CT_small.dcm"))
    del dataset.PixelData
    dataset.save_as(path)
    return path


@pytest.mark.parametrize("options", [{}, {"resize": "squash", "histogram_equalization": True}],
                         ids=["pad", "squash-equalised"])
def test_predict_input_is_the_training_cache_tensor(small_sample, tmp_path, options):
    datamodule = sample_datamodule(small_sample, **options)
    model_path, models = saved_model(tmp_path, "multiclass",
                                     preprocessing=datamodule.preprocessing)
    bundle = load_model(model_path)  # the preprocessing comes back from the file, not the test
    assert bundle.preprocessing == datamodule.preprocessing
    loaded = next(iter(datamodule.test_dataloader()))
    training = datamodule.on_after_batch_transfer(loaded, 0)["image"]
    files = [small_sample / p for p in datamodule.split_manifest("test")["path"][:len(training)]]
    dataset = InputImages(files, bundle.preprocessing)
    prepared = collate_inputs([dataset[i] for i in range(len(files))])
    assert torch.equal(bundle.preprocessing.normalise(prepared.images), training)
    table = predict_files(bundle, files, batch_size=3, device="cpu")
    np.testing.assert_allclose(table[PROBABILITIES].to_numpy(),
                               hand_probabilities("multiclass", models, training).numpy(),
                               atol=1e-6)
    assert (table["error"] == "").all() and (table["formulation"] == "multiclass").all()


@pytest.fixture()
def mixed_inputs(tmp_path) -> dict[str, Path]:
    """Good files, their twins, and every kind of bad input."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    grey = _grey()
    colour = np.stack([grey, np.roll(grey, 7, axis=1), 255 - grey], axis=2)
    return {
        "png8": _write(folder / "grey8.png", grey),
        "corrupt_dicom": folder.joinpath("corrupt.dcm"),
        "png16": _write(folder / "grey16.png", grey.astype(np.uint16) * 257),
        "no_pixels": _dicom_without_pixels(folder / "no_pixels.dcm"),
        "rgb_grey": _write(folder / "replicated.png", np.repeat(grey[..., None], 3, axis=2)),
        "rgb_jpeg": _write(folder / "colour.jpg", colour),
        "one_pixel": _write(folder / "one_pixel.png", np.full((1, 1), 128, np.uint8)),
        "missing": folder / "missing.png",
        "text": folder / "notes.txt",
        "png8_other": _write(folder / "other.png", _grey(seed=3)),
    }


def _make_bad_files(files: dict[str, Path]) -> None:
    files["corrupt_dicom"].write_bytes(b"DICM" + bytes(range(256)) * 4)
    files["text"].write_text("not an image")


EXPECTED_ERRORS = {
    "corrupt_dicom": "cannot read as DICOM",
    "no_pixels": "no Pixel Data",
    "rgb_jpeg": "colour image",
    "one_pixel": "1x1 pixels",
    "missing": "No such file",
    "text": "unsupported file type",
}


def test_bad_inputs_are_reported_and_the_batch_completes(tmp_path, mixed_inputs):
    _make_bad_files(mixed_inputs)
    model_path, models = saved_model(tmp_path, "binary")
    bundle = load_model(model_path)
    table = predict_files(bundle, list(mixed_inputs.values()), batch_size=3, device="cpu")
    assert list(table.columns) == list(PREDICTION_COLUMNS)
    rows = dict(zip(mixed_inputs, table.to_dict("records"), strict=True))
    for name, row in rows.items():
        assert row["path"] == str(mixed_inputs[name])
        if name in EXPECTED_ERRORS:
            assert EXPECTED_ERRORS[name] in row["error"], (name, row["error"])
            assert np.isnan(row["edema_prob"]) and np.isnan(row["effusion_prob"])
            assert pd.isna(row["edema_label"]) and pd.isna(row["effusion_label"])
        else:
            assert row["error"] == "", (name, row["error"])
            assert 0 <= row["edema_prob"] <= 1 and 0 <= row["effusion_prob"] <= 1
    # a 16-bit PNG and a grey image stored as RGB are predicted as their 8-bit grey twin (to
    # float32 rounding: the twins sit in other batches, and channels-last convolutions round
    # by batch)
    for twin in ("png16", "rgb_grey"):
        assert rows[twin]["edema_prob"] == pytest.approx(rows["png8"]["edema_prob"], abs=1e-6)
        assert rows[twin]["effusion_prob"] == pytest.approx(rows["png8"]["effusion_prob"],
                                                            abs=1e-6)
    # the good ones, by hand
    expected = hand_probabilities("binary", models, _normalised_by_hand(_padded_by_hand(
        mixed_inputs["png8"]), 3))
    assert [rows["png8"]["edema_prob"], rows["png8"]["effusion_prob"]] == pytest.approx(
        expected[0].tolist(), abs=1e-6)


def test_decoding_workers_change_no_result(tmp_path, mixed_inputs):
    _make_bad_files(mixed_inputs)
    bundle = load_model(saved_model(tmp_path, "binary")[0])
    files = list(mixed_inputs.values()) * 2  # 20 files, 7 batches of 3
    here = predict_files(bundle, files, batch_size=3, device="cpu", num_workers=0)
    workers = predict_files(bundle, files, batch_size=3, device="cpu", num_workers=2)
    pd.testing.assert_frame_equal(here.drop(columns=["edema_prob", "effusion_prob"]),
                                  workers.drop(columns=["edema_prob", "effusion_prob"]))
    assert (here["error"] != "").sum() == 12 and here["edema_prob"].notna().sum() == 8
    np.testing.assert_allclose(workers[["edema_prob", "effusion_prob"]].to_numpy(),
                               here[["edema_prob", "effusion_prob"]].to_numpy(),
                               rtol=1e-6, atol=1e-7, equal_nan=True)


def _padded_by_hand(path: Path) -> torch.Tensor:
    """(1, 32, 32) uint8: the 40x50 PNG decoded by OpenCV, scaled to 26x32 (INTER_AREA) and
    centred on black, as the ``pad`` policy at 32 px places it."""
    square = cv2.resize(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), (32, 26),
                        interpolation=cv2.INTER_AREA)
    padded = np.zeros((32, 32), np.uint8)
    padded[3:29] = square
    return torch.from_numpy(padded)[None]


def _normalised_by_hand(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, channels, S, S): ``(x / 255 - mean) / std`` with ImageNet's constants per channel,
    or with their means for one channel."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    if channels == 1:
        mean, std = mean.mean(dim=1, keepdim=True), std.mean(dim=1, keepdim=True)
    return (images[:, None].float() / 255 - mean) / std


def test_grey_input_model_gets_one_channel_input(tmp_path, mixed_inputs):
    path, (model,) = saved_model(tmp_path, "multiclass", Preprocessing(32, channels=1))
    table = predict_files(load_model(path), [mixed_inputs["png8"]], device="cpu")
    expected = hand_probabilities("multiclass", [model],
                                  _normalised_by_hand(_padded_by_hand(mixed_inputs["png8"]), 1))
    np.testing.assert_allclose(table[PROBABILITIES].to_numpy(), expected.numpy(), atol=1e-6)


def test_labels_use_the_chosen_operating_point_strictly(tmp_path, mixed_inputs):
    files = [mixed_inputs[k] for k in ("png8", "png8_other", "rgb_grey")]
    model_path, _ = saved_model(tmp_path, "multilabel")
    probabilities = predict_files(load_model(model_path), files, device="cpu")[PROBABILITIES]
    # youden: thresholds equal to one image's probability, so that image is labelled 0 (p > t
    # only); sens90: the lowest probability minus a little, so every image is labelled 1
    youden = {f: float(probabilities[f"{f}_prob"].iloc[1]) for f in ("edema", "effusion")}
    sens90 = {f: float(probabilities[f"{f}_prob"].min()) - 1e-6 for f in ("edema", "effusion")}
    points = {f: {"0.5": 0.5, "youden": youden[f], "sens90": sens90[f]} for f in youden}
    model_path, _ = saved_model(tmp_path, "multilabel", thresholds=youden, threshold_record={
        "operating_point": "youden", "operating_points": points})
    bundle = load_model(model_path)
    # the default is 0.5 (the README's and the report's accuracy), not the saved Youden point
    for rule, thresholds in ((None, {"edema": 0.5, "effusion": 0.5}), ("youden", youden),
                             ("sens90", sens90)):
        table = predict_files(bundle, files, device="cpu",
                              **({} if rule is None else {"threshold": rule}))
        assert (table["threshold_rule"] == (rule or "0.5")).all()
        for finding in ("edema", "effusion"):
            expected = [int(p > thresholds[finding]) for p in probabilities[f"{finding}_prob"]]
            assert table[f"{finding}_label"].tolist() == expected, (rule, finding)
            assert (table[f"{finding}_threshold"] == thresholds[finding]).all()
    assert table["edema_label"].tolist() == [1, 1, 1]


def test_an_operating_point_the_model_lacks_is_refused(tmp_path, mixed_inputs):
    bundle = load_model(saved_model(tmp_path, "multiclass")[0])  # records no chosen point
    with pytest.raises(BadValueError, match=r"records no youden threshold for edema, effusion"
                                            r".*use --threshold 0\.5"):
        predict_files(bundle, [mixed_inputs["png8"]], device="cpu", threshold="youden")


def test_help_names_the_operating_point_and_the_glob(capsys):
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    text = capsys.readouterr().out
    assert "'scans/**/*.dcm'" in text  # not 'scans//*.dcm': only **bold** pairs are markup
    assert "--threshold {0.5,youden,sens90}" in text and "(default: 0.5)" in text


def test_cli_writes_predictions_csv_and_overlays(tmp_path, mixed_inputs):
    _make_bad_files(mixed_inputs)
    model_path, _ = saved_model(tmp_path, "multiclass")
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"path": ["inputs/grey8.png", str(mixed_inputs["missing"])]}).to_csv(
        manifest, index=False)
    out = tmp_path / "out"
    written = predict.main(["--ckpt", str(model_path), "--inputs", str(manifest),
                            f"{tmp_path}/inputs/*16.png", "--out", str(out), "--heatmaps",
                            "--batch-size", "2", "--device", "cpu"])
    assert written == out / "predictions.csv"
    table = pd.read_csv(written, keep_default_na=False)
    assert list(table.columns) == [*PREDICTION_COLUMNS, "edema_heatmap", "effusion_heatmap"]
    assert table["path"].tolist() == [str(mixed_inputs[k]) for k in ("png8", "missing", "png16")]
    assert table["error"].iloc[1] != "" and table["edema_prob"].iloc[1] == ""
    assert table["edema_heatmap"].iloc[1] == ""
    for row in (0, 2):
        assert table["error"].iloc[row] == ""
        for finding in ("edema", "effusion"):
            overlay = cv2.imread(str(out / table[f"{finding}_heatmap"].iloc[row]))
            # the original's geometry, not 32x32, and the title and colour bar margins
            title, bar = heatmaps.margins((40, 50))
            assert overlay.shape == (40 + title, 50 + bar, 3)


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    for argv, message in ((["--inputs", "x"], "the following arguments are required: --ckpt"),
                          (["--ckpt", "m.pt", "--inputs", "a.png", "--batch-size", "many"],
                           "--batch-size: invalid int value: 'many'")):
        with pytest.raises(SystemExit) as bad:
            predict.main(argv)
        assert bad.value.code == 2 and message in capsys.readouterr().err
    # the former key=value form gets the flag to use instead
    with pytest.raises(BadValueError, match="options are flags now, e.g. --batch-size 2"):
        predict.main(["--ckpt", "m.pt", "--inputs", "a.png", "batch_size=2"])
    with pytest.raises(SystemExit) as help_exit:
        predict.main(["--help"])
    assert help_exit.value.code == 0 and "--ckpt PATH" in capsys.readouterr().out


def test_collect_inputs(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    first = _write(tmp_path / "a" / "deep" / "x.PNG", _grey((4, 4)))
    second = _write(tmp_path / "a" / "y.jpg", _grey((4, 4)))
    (tmp_path / "a" / "readme.txt").write_text("skip me")
    assert collect_inputs(str(tmp_path / "a")) == [first, second]  # recursive, sorted
    assert collect_inputs(f"{tmp_path}/a/**/*.PNG") == [first]
    assert collect_inputs([str(first), str(first)]) == [first]
    missing = tmp_path / "gone.dcm"
    assert collect_inputs(str(missing)) == [missing]  # kept: reported as a failed row
    manifest = tmp_path / "list.csv"
    pd.DataFrame({"path": ["a/y.jpg", str(first)], "note": [1, 2]}).to_csv(manifest,
                                                                           index=False)
    assert collect_inputs(str(manifest)) == [second, first]
    pd.DataFrame({"file": ["a/y.jpg"]}).to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="lacks column\\(s\\) \\['path'\\]"):
        collect_inputs(str(manifest))
    with pytest.raises(ValueError, match="matches no file"):
        collect_inputs(f"{tmp_path}/*.dcm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        collect_inputs(str(tmp_path / "empty"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU machine")
def test_unavailable_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")

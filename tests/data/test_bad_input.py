"""A bad-input corpus, generated here: every case ends in a named error (or a recorded failure
row) while the work around it completes; nothing is silently wrong.

Cases are grouped by where they enter: image decoding, the image cache, tables (CSV), predict
inputs. Each test is one case with its assertion.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from cxr_lightning.data.cache import (
    COMPLETE_MARKER,
    CacheBuildError,
    CacheSpec,
    CacheSpecMismatchError,
    build_image_cache,
    build_shards,
    open_image_cache,
)
from cxr_lightning.data.images import ImageDecodeError, read_image_uint8
from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.data.sources.chexpert import build as build_chexpert
from cxr_lightning.data.sources.mimic import build as build_mimic
from cxr_lightning.data.sources.nih import build as build_nih
from cxr_lightning.data.sources.options import SourceOptions
from cxr_lightning.data.tables import TableError
from cxr_lightning.inference import images as inference_images
from cxr_lightning.inference.images import InputImages
from cxr_lightning.inference.inputs import collect_inputs
from cxr_lightning.predict import parse_args
from tests.helpers.dicom import cr_dataset
from tests.helpers.samples import sample_tables

SPEC = CacheSpec(Preprocessing(16), shard_size=4)


def _cr(pixels: np.ndarray | None = None, **tags: object) -> Dataset:
    """A minimal single-frame 12-bit CR dataset (explicit VR little endian) with ``tags``."""
    if pixels is None:
        pixels = np.random.default_rng(0).integers(0, 4096, size=(24, 32), dtype=np.uint16)
    return cr_dataset(pixels, **tags)


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _decode_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(ImageDecodeError) as raised:
        read_image_uint8(path, **kwargs)
    message = str(raised.value)
    assert str(path) in message
    return message


# ---------------------------------------------------------------------- image decoding


def _number_of_frames_abc(path: Path) -> Path:
    """Patch the file's NumberOfFrames "1" (explicit VR LE) to "abc", which pydicom will not
    write itself."""
    element = b"\x28\x00\x08\x00IS\x02\x001 "
    data = path.read_bytes()
    assert data.count(element) == 1
    path.write_bytes(data.replace(element, b"\x28\x00\x08\x00IS\x04\x00abc "))
    return path


def test_number_of_frames_not_a_number_is_a_named_decode_error(tmp_path: Path) -> None:
    path = _number_of_frames_abc(_save(_cr(NumberOfFrames="1"), tmp_path / "frames.dcm"))
    assert "NumberOfFrames = 'abc' is not an integer" in _decode_error(path)


@pytest.mark.parametrize(("keyword", "value"), [("WindowCenter", "nan"), ("WindowWidth", "inf"),
                                                ("RescaleSlope", "nan"),
                                                ("RescaleIntercept", "-inf")])
def test_non_finite_window_or_rescale_is_refused(tmp_path: Path, keyword: str,
                                                 value: str) -> None:
    tags = {"WindowCenter": "2048", "WindowWidth": "4096", "RescaleSlope": "1",
            "RescaleIntercept": "0"}
    path = _save(_cr(**tags), tmp_path / f"{keyword}.dcm")
    ds = dcmread(path)
    ds[keyword].value = value
    ds.save_as(path)
    assert f"{keyword} = {float(value)} is not finite" in _decode_error(path)


def test_declared_size_over_max_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    """Rows x Columns declare 20000 x 20000 over a few bytes of pixel data: refused from the
    header (decoding would fail anyway, but only after allocating 800 MB)."""
    ds = _cr()
    ds.Rows = ds.Columns = 20000
    path = _save(ds, tmp_path / "huge.dcm")
    assert "20000 x 20000 = 400000000 pixels exceeds max_pixels" in _decode_error(path)


def _deflated(ds: Dataset, path: Path) -> Path:
    """``ds`` written with the Deflated Explicit VR Little Endian transfer syntax."""
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_deflated_dataset_inflating_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    """A 4096 x 4096 image, deflated to some 30 KB, against max_pixels=1000: refused while
    inflating, in bounded memory (the limit is max_pixels * 4 bytes + 16 MiB)."""
    pixels = np.zeros((4096, 4096), dtype=np.uint16)  # 32 MiB inflated
    path = _deflated(_cr(pixels), tmp_path / "bomb.dcm")
    assert path.stat().st_size < 100_000
    assert "inflates beyond" in _decode_error(path, max_pixels=1000)


def test_a_deflated_dataset_within_the_limit_decodes(tmp_path: Path) -> None:
    plain = _save(_cr(), tmp_path / "plain.dcm")
    deflated = _deflated(_cr(), tmp_path / "deflated.dcm")
    np.testing.assert_array_equal(read_image_uint8(deflated), read_image_uint8(plain))


def test_png_over_max_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((100, 300), dtype=np.uint16)).save(path)
    assert "100 x 300 = 30000 pixels exceeds max_pixels=20000" in _decode_error(
        path, max_pixels=20000)


def _headerless(ds: Dataset, path: Path) -> Path:
    """``ds`` as a classic headerless file: no preamble, no meta, implicit VR little endian."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    path.write_bytes(buffer.getvalue())
    return path


def test_headerless_implicit_vr_dicom_decodes_like_its_twin(tmp_path: Path) -> None:
    reference = _save(_cr(WindowCenter="2000", WindowWidth="3000"), tmp_path / "with_meta.dcm")
    ds = _cr(WindowCenter="2000", WindowWidth="3000")
    del ds.file_meta
    path = _headerless(ds, tmp_path / "headerless.dcm")
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_image_uint8(path), read_image_uint8(reference))


@pytest.mark.parametrize("content", [b"", b"not a dicom file", b"\x00" * 300])
def test_junk_named_dcm_is_a_named_decode_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(content)
    assert "DICOM" in _decode_error(path)


def test_truncated_dicom_is_a_named_decode_error(tmp_path: Path) -> None:
    whole = _save(_cr(), tmp_path / "whole.dcm").read_bytes()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(whole[: len(whole) - 500])
    _decode_error(path)


def test_dicom_without_pixel_data_is_a_named_decode_error(tmp_path: Path) -> None:
    ds = _cr()
    del ds.PixelData
    assert "no Pixel Data" in _decode_error(_save(ds, tmp_path / "empty.dcm"))


def test_colour_png_is_a_named_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "colour.png"
    Image.fromarray(np.dstack([np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8),
                               np.zeros((8, 8), np.uint8)])).save(path)
    assert "colour image" in _decode_error(path)


def test_missing_file_is_a_named_decode_error(tmp_path: Path) -> None:
    _decode_error(tmp_path / "absent.png")


def test_unexpected_exception_in_predict_becomes_an_error_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resource failure (MemoryError) of one file: its row names it, the other decodes."""
    good = tmp_path / "good.png"
    Image.fromarray(np.full((20, 20), 100, dtype=np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    shutil.copy(good, bad)
    prepare = inference_images.prepare_image

    def failing(path: Path, preprocessing: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
        if path == bad:
            raise MemoryError("Unable to allocate 5.3 GiB")
        return prepare(path, preprocessing)

    monkeypatch.setattr(inference_images, "prepare_image", failing)
    items = [InputImages([bad, good], SPEC.preprocessing)[i] for i in range(2)]
    assert ([item.error for item in items][0].startswith("MemoryError: Unable to allocate")
            and items[1].error == "" and items[1].square is not None)


# ---------------------------------------------------------------------- the image cache


@pytest.fixture()
def sample_copy(small_sample: Path, tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """A private copy of the generated sample and its manifest (12 images, 3 shards)."""
    root = tmp_path / "root"
    shutil.copytree(small_sample, root)
    for table in sample_tables(small_sample).glob("*.csv.gz"):  # one directory holds it all
        shutil.copy(table, root)
    manifest, _ = build_mimic(root, SourceOptions())
    return manifest.iloc[:12].reset_index(drop=True), root


def test_a_malformed_dicom_is_a_recorded_failure_and_the_build_completes(sample_copy,
                                                                        tmp_path):
    manifest, root = sample_copy
    bad = manifest.iloc[2]
    ds = dcmread(root / bad["path"])
    ds.NumberOfFrames = 1
    _number_of_frames_abc(_save(ds, root / bad["path"]))
    summary = build_shards(manifest, root, tmp_path / "cache", SPEC, 1, max_failed_fraction=0.1)
    failures = open_image_cache(tmp_path / "cache", SPEC).skipped
    assert (summary.complete, list(failures["image_id"]), bad["path"] in failures["reason"][0]
            ) == (True, [bad["image_id"]], True)


def test_an_exception_of_any_type_is_a_recorded_failure(sample_copy, tmp_path, monkeypatch):
    manifest, root = sample_copy

    def broken(self: Preprocessing, path: Path, max_pixels: int) -> np.ndarray:
        raise KeyError("a decoder bug")

    monkeypatch.setattr(Preprocessing, "load", broken)
    with pytest.raises(CacheBuildError, match=r"12 of 12 images could not be decoded.*"
                                              r"KeyError: 'a decoder bug'"):
        build_shards(manifest, root, tmp_path / "cache", SPEC, 1)
    assert not (tmp_path / "cache" / COMPLETE_MARKER).exists()


def test_a_cache_of_another_root_is_refused(sample_copy, tmp_path):
    manifest, root = sample_copy
    build_image_cache(manifest, root, tmp_path / "caches", SPEC, 1)
    junk = tmp_path / "junk"
    for path in manifest["path"]:
        (junk / path).parent.mkdir(parents=True, exist_ok=True)
        (junk / path).write_bytes(b"junk")
    with pytest.raises(CacheSpecMismatchError, match=rf'"source_root": "{junk}"'):
        build_image_cache(manifest, junk, tmp_path / "caches", SPEC, 1)


def test_a_changed_file_is_re_read(sample_copy, tmp_path):
    manifest, root = sample_copy
    first = build_image_cache(manifest, root, tmp_path / "caches", SPEC, 1)
    changed = manifest.iloc[5]
    before = np.array(first.get(changed["image_id"]))
    shutil.copy(root / manifest.iloc[0]["path"], root / changed["path"])
    os.utime(root / changed["path"], ns=(1, 1))
    again = build_image_cache(manifest, root, tmp_path / "caches", SPEC, 1)
    now = np.array(again.get(changed["image_id"]))
    expected = SPEC.preprocessing.load(root / manifest.iloc[0]["path"])
    assert not np.array_equal(before, expected) and np.array_equal(now, expected)


def test_a_vanished_file_becomes_a_failure_on_reuse(sample_copy, tmp_path):
    manifest, root = sample_copy
    build_image_cache(manifest, root, tmp_path / "caches", SPEC, 1)
    gone = manifest.iloc[7]
    (root / gone["path"]).unlink()
    again = build_image_cache(manifest, root, tmp_path / "caches", SPEC, 1,
                              max_failed_fraction=0.1)
    assert gone["image_id"] not in again.row_of and len(again.row_of) == 11


def test_retry_failures_decodes_failed_images_again(sample_copy, tmp_path):
    manifest, root = sample_copy
    directory = tmp_path / "cache"
    build_shards(manifest, root, directory, SPEC, 1, max_failed_fraction=1.0, max_pixels=10)
    assert len(open_image_cache(directory, SPEC).row_of) == 0
    with pytest.raises(CacheBuildError):  # the failed shards are kept, and still too many
        build_shards(manifest, root, directory, SPEC, 1)
    build_shards(manifest, root, directory, SPEC, 1, retry_failures=True)
    assert len(open_image_cache(directory, SPEC).row_of) == 12


def test_a_build_with_too_many_failures_is_an_error_not_complete(sample_copy, tmp_path):
    manifest, root = sample_copy
    for path in manifest["path"].iloc[:2]:
        (root / path).write_bytes(b"not a dicom file")
    with pytest.raises(CacheBuildError, match=r"2 of 12 images could not be decoded.*"
                                              r"max_failed_fraction=0.05.*--retry-failures"):
        build_shards(manifest, root, tmp_path / "cache", SPEC, 1)
    assert not (tmp_path / "cache" / COMPLETE_MARKER).exists()



# ---------------------------------------------------------------------- tables (CSV)


@pytest.fixture()
def mimic_root(small_sample: Path, tmp_path: Path) -> Path:
    """A private copy of the sample's three MIMIC CSVs (the images are not needed)."""
    root = tmp_path / "mimic"
    (root / "files").mkdir(parents=True)
    for csv in sample_tables(small_sample).glob("mimic-cxr-2.0.0-*.csv.gz"):
        shutil.copy(csv, root / csv.name)
    return root


def _edit_csv(root: Path, name: str, edit) -> Path:
    path = root / f"mimic-cxr-2.0.0-{name}.csv.gz"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(table).to_csv(path, index=False)
    return path


def _table_error(root: Path, path: Path, match: str) -> None:
    with pytest.raises(TableError, match=match) as raised:
        build_mimic(root, SourceOptions())
    assert str(path) in str(raised.value)


def test_a_blank_subject_id_is_an_error_naming_the_line(mimic_root: Path) -> None:
    def blank(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[4, "subject_id"] = ""
        return table

    path = _edit_csv(mimic_root, "metadata", blank)
    _table_error(mimic_root, path, "column 'subject_id' is blank on line 6")


def test_a_missing_label_column_is_named(mimic_root: Path) -> None:
    path = _edit_csv(mimic_root, "chexpert", lambda t: t.drop(columns="Edema"))
    _table_error(mimic_root, path, r"lacks column\(s\) \['Edema'\]")


@pytest.mark.parametrize(("value", "match"), [("yes", "must hold numbers; line 3 holds 'yes'"),
                                              ("2", "holds '2' on line 3; allowed")])
def test_labels_that_are_not_codes_are_errors(mimic_root: Path, value: str, match: str) -> None:
    def word(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[1, "Pleural Effusion"] = value
        return table

    _table_error(mimic_root, _edit_csv(mimic_root, "chexpert", word), match)


@pytest.mark.parametrize("name", ["val", "Train"])
def test_unknown_split_names_are_errors(mimic_root: Path, name: str) -> None:
    def rename(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[0, "split"] = name
        return table

    _table_error(mimic_root, _edit_csv(mimic_root, "split", rename),
                 rf"column 'split' holds '{name}' on line 2; allowed: \['test', 'train', "
                 r"'validate'\]")


def test_a_duplicated_dicom_id_is_an_error(mimic_root: Path) -> None:
    path = _edit_csv(mimic_root, "metadata", lambda t: pd.concat([t, t.iloc[[3]]]))
    _table_error(mimic_root, path, r"\['dicom_id'\] must be unique")


@pytest.mark.parametrize(("content", "match"), [
    (lambda: gzip.compress(b""), "empty file"),
    (lambda: gzip.compress(b"dicom_id,subject_id,study_id,ViewPosition\n"), "header only"),
    (lambda: gzip.compress(b"dicom_id,subject_id,study_id,ViewPosition\n" * 2000)[:300],
     "cannot be read as a CSV"),
    (lambda: b"dicom_id,subject_id,study_id,ViewPosition\na,1,2,PA\n",
     "cannot be read as a CSV .a .gz must be a complete gzip file"),
])
def test_unreadable_gzip_csvs_are_named(mimic_root: Path, content, match: str) -> None:
    path = mimic_root / "mimic-cxr-2.0.0-metadata.csv.gz"
    path.write_bytes(content())
    _table_error(mimic_root, path, match)


def test_nih_blank_patient_id_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text("Image Index,Finding Labels,Follow-up #,Patient ID,View Position\n"
                    "00000001_000.png,Edema,0,1,PA\n00000002_000.png,No Finding,0,,AP\n")
    with pytest.raises(TableError, match=rf"{path}: column 'Patient ID' is blank on line 3"):
        build_nih(tmp_path, SourceOptions())


def test_chexpert_words_as_labels_are_an_error(tmp_path: Path) -> None:
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA,Edema,Pleural Effusion\n"
    (tmp_path / "train.csv").write_text(
        header + "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,F,60,"
        "Frontal,AP,positive,0.0\n")
    (tmp_path / "valid.csv").write_text(header)
    with pytest.raises(TableError, match=r"train.csv: column 'Edema' must hold numbers; line 2 "
                                         r"holds 'positive'"):
        build_chexpert(tmp_path, SourceOptions())


def test_a_predict_manifest_without_rows_is_named(tmp_path: Path) -> None:
    manifest = tmp_path / "inputs.csv"
    manifest.write_text("path\n")
    with pytest.raises(TableError, match=rf"{manifest}: header only"):
        collect_inputs(str(manifest))


# ---------------------------------------------------------------------- predict inputs


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 50, dtype=np.uint8)).save(path)
    return path


def test_a_hash_in_a_file_name_is_not_a_yaml_comment(tmp_path: Path) -> None:
    named = _png(tmp_path / "case #1.png")
    shutil.copy(named, tmp_path / "case")
    args = parse_args(["--ckpt", "model.pt", "--inputs", str(named)])
    assert collect_inputs(args.inputs) == [named]


def test_an_existing_path_with_brackets_is_not_a_glob(tmp_path: Path) -> None:
    named = _png(tmp_path / "[a].png")
    _png(tmp_path / "a.png")
    args = parse_args(["--ckpt", "model.pt", "--inputs", str(named)])
    assert collect_inputs(args.inputs) == [named]


def test_a_symlink_loop_yields_each_file_once(tmp_path: Path) -> None:
    image = _png(tmp_path / "scans" / "one.png")
    (tmp_path / "scans" / "loop").symlink_to(tmp_path / "scans")
    assert (collect_inputs(str(tmp_path / "scans" / "**" / "*.png")),
            collect_inputs(str(tmp_path / "scans"))) == ([image], [image])


def test_a_broken_symlink_gets_its_row(tmp_path: Path) -> None:
    image = _png(tmp_path / "scans" / "one.png")
    broken = tmp_path / "scans" / "two.png"
    broken.symlink_to(tmp_path / "gone.png")
    assert (collect_inputs(str(tmp_path / "scans")),
            collect_inputs(str(tmp_path / "scans" / "*.png"))) == ([image, broken],) * 2

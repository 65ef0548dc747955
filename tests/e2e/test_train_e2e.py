"""End to end: the real CLI multirun over the three formulations on a tiny generated sample."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from cxr_lightning.findings import FINDINGS
from cxr_lightning.inference.bundle import load_model
from cxr_lightning.inference.predictor import predict_files
from tests.helpers.samples import sample_tables

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_IMAGES = Path("physionet.org", "files", "mimic-cxr", "2.0.0")


MULTIRUN = ["-m", "formulation=binary,multilabel,multiclass", "data.sample.n_subjects=40",
            "data.image_size=32", "trainer.max_epochs=2", "unfreeze.interval=1",
            "unfreeze.max_blocks=1", "stage_metrics=true"]


def _multirun(home: Path, data: Path, *arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cxr_lightning.train", *MULTIRUN, f"paths.root_dir={home}",
               f"paths.data_dir={data}", *arguments]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.fixture(scope="module")
def multirun(tmp_path_factory, cli_data):
    """Run `python -m cxr_lightning.train -m formulation=...` once; return its sweep dir."""
    home = tmp_path_factory.mktemp("e2e")
    done = _multirun(home, cli_data)
    sweeps = list((home / "outputs" / "multiruns").iterdir())
    assert len(sweeps) == 1
    return {"sweep": sweeps[0], "home": home, "data": cli_data, "log": done.stdout + done.stderr}


def test_every_formulation_writes_complete_results(multirun):
    results = {json.loads(p.read_text())["formulation"]: json.loads(p.read_text())
               for p in multirun["sweep"].glob("*/results.json")}
    assert set(results) == {"binary", "multilabel", "multiclass"}
    for name, result in results.items():
        metrics = result["metrics"]
        predictions = pd.DataFrame(result["predictions"])
        assert len(predictions) == metrics["test/n/edema"] > 0
        for finding in FINDINGS:
            probability = predictions[f"{finding}_prob"]
            assert probability.between(0, 1).all()
            assert 0 <= metrics[f"test/auroc/{finding}"] <= 1
            correct = ((probability > 0.5) == (predictions[finding] == 1)).mean()
            assert metrics[f"test/acc/{finding}"] == pytest.approx(correct)
        assert metrics["train/epochs"] == (4 if name == "binary" else 2)
        assert len(result["members"]) == (2 if name == "binary" else 1)
        for member in result["members"]:  # one wall time per epoch the model trained
            assert len(member["epoch_times_s"]) == member["epochs"] == 2
            assert member["unfreeze_history"] == [{"epoch": 0, "blocks": []},
                                                  {"epoch": 1, "blocks": ["layer4.1"]}]
        assert metrics["train/total_time_s"] > 0
        job_dir = next(multirun["sweep"].glob(f"*_{name}"))
        bundle = load_model(job_dir / "model.pt", formulation=name)  # weights_only
        assert len(bundle.members) == len(result["members"])
        assert bundle.thresholds == pytest.approx(
            {f: result["thresholds"][f].get("youden", 0.5) for f in FINDINGS})
        # model.pt on the raw DICOMs gives the probabilities the job recorded for them
        sample = multirun["data"] / "mimic_cxr_sample" / SAMPLE_IMAGES
        manifest = pd.read_csv(job_dir / "manifest.csv")
        tested = manifest[manifest["split"] == "test"].head(4)
        predicted = predict_files(bundle, [sample / path for path in tested["path"]],
                                  device="cpu")
        recorded = predictions.set_index("image_id").loc[tested["image_id"]]
        for finding in FINDINGS:
            assert predicted[f"{finding}_prob"].to_numpy() == pytest.approx(
                recorded[f"{finding}_prob"].to_numpy(), abs=1e-5)
        for member in result["members"]:  # stage_metrics=true: each stage's best epoch, tested
            stages = member["stages"]
            assert [(s["stage"], s["start_epoch"], s["epochs"]) for s in stages] == [
                (0, 0, 1), (1, 1, 1)]
            for stage in stages:  # weights only: resuming uses last.ckpt, these are tested
                saved = torch.load(stage["checkpoint"], map_location="cpu", weights_only=True)
                assert "state_dict" in saved and "optimizer_states" not in saved
            best = max(stages, key=lambda s: s["metrics"]["val/auroc/mean"])
            assert best["metrics"]["val/auroc/mean"] == pytest.approx(
                member["best_val_auroc_mean"])
            for finding in member["findings"]:  # the best stage's checkpoint is the job's
                for metric in ("auroc", "acc"):
                    key = f"test/{metric}/{finding}"
                    assert best["metrics"][key] == pytest.approx(metrics[key], abs=1e-6)
        assert result["config"]["data"]["source"] == "sample"
        test_ids = set(manifest.loc[manifest["split"] == "test", "image_id"])
        assert set(predictions["image_id"]) == test_ids
        val_predictions = pd.DataFrame(result["val_predictions"])
        val_ids = manifest.loc[manifest["split"] == "val", "image_id"]
        assert val_predictions["image_id"].tolist() == val_ids.tolist()
        assert val_predictions[[f"{f}_prob" for f in FINDINGS]].stack().between(0, 1).all()
        cohort = pd.read_csv(next(multirun["sweep"].glob(f"*_{name}")) / "cohort.csv",
                             index_col=[0, 1])
        assert cohort.loc[("labels", "1,1"), "test"] == (
            (predictions["edema"] == 1) & (predictions["effusion"] == 1)).sum()
    assert "embedded MIMIC-CXR-format sample" in multirun["log"]


def test_multirun_ends_with_a_comparison_table(multirun):
    table = pd.read_csv(multirun["sweep"] / "comparison.csv")
    assert sorted(table["formulation"]) == ["binary", "multiclass", "multilabel"]
    assert "Comparison of 3 jobs" in multirun["log"]


def test_the_same_multirun_again_gives_the_same_comparison_table(multirun):
    """Same command, same numbers: every metric of every job, bit for bit (timings aside)."""
    rerun = multirun["home"] / "rerun"
    _multirun(multirun["home"], multirun["data"], f"hydra.sweep.dir={rerun}")
    first, second = (pd.read_csv(sweep / "comparison.csv") for sweep in (multirun["sweep"], rerun))
    timings = [c for c in first.columns if "time" in c]
    assert len(first) == 3 and timings
    pd.testing.assert_frame_equal(first.drop(columns=timings), second.drop(columns=timings),
                                  check_exact=True)
    for job in first["job"]:  # and every per-image probability
        one, two = (json.loads((sweep / job / "results.json").read_text())
                    for sweep in (multirun["sweep"], rerun))
        assert one["predictions"] == two["predictions"], job


def test_later_formulations_reuse_the_first_ones_activation_caches(multirun):
    """binary's first model and the multilabel and multiclass models start from one backbone
    (seed 42): the stores the first job built (or found) are reused, not built again."""
    boundaries = ["layer4.1", "pooled"]  # resnet18's head-only and +layer4.1 settings
    for job in ("1_multilabel", "2_multiclass"):
        log = (multirun["sweep"] / job / "train.log").read_text()
        assert sorted(re.findall(r"Activation cache at (\S+): reusing", log)) == boundaries, job
        assert "building" not in log, job
    binary = (multirun["sweep"] / "0_binary" / "train.log").read_text()
    assert len(re.findall(r"Activation cache at (\S+): (?:building|reusing)", binary)) == 4


def _wandb_files(sweep: Path) -> list[Path]:
    runs = list(sweep.glob("*/wandb/offline-run-*"))
    assert len(runs) == 3, runs  # one offline run per job, the binary pair included
    return [p for run in runs for p in run.rglob("*") if p.is_file()]


def test_wandb_runs_are_offline_and_hold_no_images_or_identifiers(multirun):
    files = _wandb_files(multirun["sweep"])
    assert any(p.suffix == ".wandb" for p in files)
    sample = multirun["data"] / "mimic_cxr_sample" / SAMPLE_IMAGES
    metadata = pd.read_csv(sample_tables(sample) / "mimic-cxr-2.0.0-metadata.csv.gz")
    image_ids = set(metadata["dicom_id"])
    subject_ids = {str(s) for s in metadata["subject_id"]}
    identifier = re.compile(rb"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}|(?<!\d)1\d{7}(?!\d)")
    for path in files:
        assert path.suffix.lower() not in {".png", ".jpg", ".jpeg", ".dcm", ".npy"}, path
        content = path.read_bytes()
        for match in identifier.findall(content):
            assert match.decode() not in image_ids | subject_ids, (path, match)
        for dicom_keyword in (b"PatientID", b"PixelData", b"PhotometricInterpretation"):
            assert dicom_keyword not in content, (path, dicom_keyword)


def _wandb_run_summary(run_dir: Path) -> dict:
    """The offline run as W&B itself reads it back (`wandb leet inspect --summary --json`)."""
    wandb_cli = Path(sys.executable).parent / "wandb"
    done = subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_dir)],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_each_job_has_one_finished_wandb_run_with_the_same_summary_keys(multirun):
    for job in sorted(multirun["sweep"].iterdir()):
        if not job.is_dir():
            continue
        results = json.loads((job / "results.json").read_text())
        (run_dir,) = job.glob("wandb/offline-run-*")
        run = _wandb_run_summary(run_dir)
        assert run["state"] == "finished" and run["project"] == "cxr-lightning"
        assert run["console_lines"] == 0  # console capture is off
        assert run["config"]["formulation"]["name"] == results["formulation"]
        for finding in FINDINGS:
            for metric in ("auroc", "acc"):
                key = f"test/{metric}/{finding}"
                assert run["summary"][key] == pytest.approx(results["metrics"][key])
        if results["formulation"] == "binary":  # both models' curves, kept apart by a prefix
            assert {"edema-val/auroc/edema", "effusion-val/auroc/effusion",
                    "edema-unfreeze/stages", "effusion-unfreeze/stages"} <= set(run["summary"])
        else:
            assert {"val/auroc/mean", "unfreeze/stages"} <= set(run["summary"])
        for finding in FINDINGS:  # W&B charts of the test ROC curve and confusion matrix
            for chart in ("roc", "confusion_matrix"):
                assert f"test/{chart}/{finding}_table" in run["summary"]


def test_csv_logs_hold_each_models_curves(multirun):
    binary = next(multirun["sweep"].glob("*_binary"))
    assert sorted(p.name for p in (binary / "csv").iterdir()) == ["binary-edema",
                                                                   "binary-effusion"]
    history = pd.read_csv(binary / "csv" / "binary-edema" / "metrics.csv")
    assert {"val/auroc/edema", "train/loss_epoch", "unfreeze/stage"} <= set(history.columns)

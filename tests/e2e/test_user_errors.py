"""A user's mistake prints one clear line and exits non-zero without a traceback (a
HYDRA_FULL_ERROR=1 shows it); a launch refused for one leaves no job directory behind."""

import os
import subprocess
import sys

import pytest


def _run(tmp_path, module, *arguments, debug=False):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MIMIC_CXR_ROOT", "HYDRA_FULL_ERROR", "CXR_DEBUG")}
    env["CXR_LIGHTNING_HOME"] = str(tmp_path / "home")
    if debug:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run([sys.executable, "-m", module, *arguments], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)


def _one_error(result, *words):
    """One error message (its first line marked ERROR/error, maybe more lines after), holding
    every word; no traceback anywhere."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines()
              if "[ERROR]" in line or line.startswith("error:") or ": error: " in line]
    assert len(errors) == 1, output
    message = output[output.index(errors[0]):]
    assert all(word in message for word in words), message


def _job_dirs(tmp_path):
    outputs = tmp_path / "home" / "outputs"
    return [p for p in outputs.glob("*/*")] if outputs.exists() else []


@pytest.mark.parametrize("multirun", [False, True])
def test_train_on_a_missing_dataset(tmp_path, multirun):
    missing = tmp_path / "no-such-mimic"
    result = _run(tmp_path, "cxr_lightning.train", *(["-m"] if multirun else []),
                  f"data.root={missing}", "model.weights=none",
                  *(["formulation=binary,multiclass"] if multirun else []))
    assert result.returncode == 2
    _one_error(result, str(missing))
    assert _job_dirs(tmp_path) == []  # no runs/<ts>_... or multiruns/<ts> left behind


@pytest.mark.slow
def test_train_reports_the_data_root_before_the_weights(tmp_path):
    # the paper preset (a dataset given) with a mistyped root and weights that cannot be had:
    # the user fixes the root first, so the root is what the launch reports
    missing = tmp_path / "mimic-cxr" / "2.0.O"
    result = _run(tmp_path, "cxr_lightning.train", f"data.root={missing}",
                  f"model.weights={tmp_path / 'w.pt'}")
    assert result.returncode == 2
    _one_error(result, "MIMIC-CXR is not where the configuration points", str(missing))
    assert "w.pt" not in result.stdout + result.stderr
    assert _job_dirs(tmp_path) == []


@pytest.mark.slow
def test_train_with_a_value_out_of_range(tmp_path):
    # found when the job starts, before the sample is generated or a model is built
    result = _run(tmp_path, "cxr_lightning.train", "trainer.max_epochs=0", "logger=csv")
    assert result.returncode == 2
    _one_error(result, "trainer.max_epochs=0: expected an integer >= 1 or -1, "
                       "e.g. trainer.max_epochs=40")
    assert _job_dirs(tmp_path) == []


def test_train_with_missing_weights(tmp_path):
    result = _run(tmp_path, "cxr_lightning.train", f"model.weights={tmp_path / 'w.pt'}")
    assert result.returncode == 2
    _one_error(result, "model.weights=", "w.pt", "no such file")
    assert _job_dirs(tmp_path) == []


def test_debug_shows_the_traceback(tmp_path):
    result = _run(tmp_path, "cxr_lightning.train", f"model.weights={tmp_path / 'w.pt'}",
                  debug=True)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "MissingFileError" not in result.stdout


def test_train_with_an_unknown_option(tmp_path):
    result = _run(tmp_path, "cxr_lightning.train", "model.wieghts=none")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "Key 'wieghts' is not in struct" in output


def test_predict_with_a_missing_checkpoint(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    result = _run(tmp_path, "cxr_lightning.predict", "--ckpt", "nothing/model.pt",
                  "--inputs", "a.png")
    assert result.returncode == 2
    _one_error(result, "ckpt=nothing/model.pt: no such file")


def test_predict_with_a_file_that_is_not_a_model(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("not a model")
    result = _run(tmp_path, "cxr_lightning.predict", "--ckpt", "notes.pt", "--inputs",
                  "a.png")
    assert result.returncode == 2
    _one_error(result, "notes.pt", "torch.load")


def test_predict_on_an_empty_folder(tmp_path):
    (tmp_path / "scans").mkdir()
    result = _run(tmp_path, "cxr_lightning.predict", "--ckpt", "model.pt", "--inputs",
                  "scans")
    assert result.returncode == 2
    _one_error(result, "inputs='scans'", "holds no")


def test_cohort_on_a_missing_root(tmp_path):
    result = _run(tmp_path, "cxr_lightning.data.cohort", "--root", str(tmp_path / "none"))
    assert result.returncode == 2
    _one_error(result, str(tmp_path / "none"))


def test_report_of_a_wrong_option(tmp_path):
    result = _run(tmp_path, "cxr_lightning.report", "--bootstrap", "10")
    assert result.returncode == 2
    _one_error(result, "unrecognized arguments: --bootstrap")


@pytest.mark.slow
@pytest.mark.parametrize("multirun", [False, True])
def test_resume_with_nothing_to_resume_is_refused(tmp_path, multirun):
    result = _run(tmp_path, "cxr_lightning.train", *(["-m"] if multirun else []),
                  "resume=true", "model.weights=none")
    assert result.returncode == 2
    _one_error(result, "resume=true: nothing to resume in",
               "hydra.sweep.dir=" if multirun else "hydra.run.dir=")
    assert _job_dirs(tmp_path) == []

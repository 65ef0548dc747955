"""The preset is chosen inside the configuration (``preset: ${auto_preset:}``), so every Hydra flag
works in any position, with and without a dataset configured."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from cxr_lightning.sweep import TABLE_METRICS

TRAIN = [sys.executable, "-m", "cxr_lightning.train"]


def _run(*arguments: str, env: dict[str, str] | None = None,
         cwd=None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "MIMIC_CXR_ROOT"}
    environment.update(env or {})
    return subprocess.run([*TRAIN, *arguments], capture_output=True, text=True, env=environment,
                          cwd=cwd, timeout=300)


# (extra arguments, environment, expected preset, expected backbone, a word of the reason)
CASES = {
    "no dataset": ([], {}, "sample", "resnet18", "no dataset is configured"),
    "data.root": (["data.root=/mimic"], {}, "paper", "resnet152", "data.root=... is given"),
    "MIMIC_CXR_ROOT": ([], {"MIMIC_CXR_ROOT": "/mimic"}, "paper", "resnet152",
                       "MIMIC_CXR_ROOT is set"),
    "explicit": (["preset=sample", "data.root=/mimic"], {}, "sample", "resnet18",
                 "chosen on the command line"),
}


@pytest.mark.parametrize(("case", "flag_first"), [
    ("no dataset", True), ("no dataset", False), ("data.root", False), ("MIMIC_CXR_ROOT", True),
    ("explicit", False)])
def test_help_states_the_preset_and_why(case, flag_first):
    extra, env, preset, _, reason = CASES[case]
    arguments = ["--help", "formulation=binary", *extra]
    result = _run(*(arguments if flag_first else arguments[1:] + arguments[:1]), env=env)
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[1]
    assert header.startswith(f"Preset: {preset} (") and reason in header, header
    assert "formulation:\n  name: binary" in result.stdout  # the job's config follows


@pytest.mark.parametrize("case", CASES)
def test_cfg_job_and_info_compose_the_chosen_preset(case):
    extra, env, preset, backbone, _ = CASES[case]
    job = _run("formulation=binary", *extra, "--cfg", "job", env=env)
    assert job.returncode == 0, job.stderr
    cfg = yaml.safe_load(job.stdout)
    assert (cfg["model"]["backbone"], cfg["formulation"]["name"]) == (backbone, "binary")
    assert (cfg["data"]["source"] == "sample") == (preset == "sample")
    info = _run(*extra, "--info", "defaults", env=env)
    assert info.returncode == 0, info.stderr
    assert f"preset/{preset} " in info.stdout and f"model/{backbone} " in info.stdout


@pytest.mark.parametrize("flag", [["--cfg", "hydra"], ["--cfg", "all", "--resolve"],
                                  ["--hydra-help"], ["--info"]])
def test_other_hydra_flags_work_last(flag):
    # --hydra-help composes Hydra's config alone: Hydra itself refuses app overrides with it
    result = _run(*([] if flag == ["--hydra-help"] else ["formulation=binary"]), *flag)
    assert result.returncode == 0, result.stderr
    assert "preset=sample" not in result.stderr


def test_an_explicit_model_wins_over_the_presets_choice():
    cfg = yaml.safe_load(_run("model=resnet50", "--cfg", "job").stdout)
    assert (cfg["model"]["backbone"], cfg["model"]["weights"], cfg["data"]["source"]) == (
        "resnet50", "none", "sample")


@pytest.mark.parametrize("case", ["no dataset", "data.root"])
def test_multirun_flag_last(tmp_path, case):
    """``-m`` after the overrides; the jobs' results already exist, so resume=true skips them
    (the point is the launch: the sweep composes the preset the rule chose)."""
    extra, env, _, backbone, _ = CASES[case]
    for number, formulation in enumerate(["binary", "multiclass"]):
        job = tmp_path / f"{number}_{formulation}"
        job.mkdir()
        (job / "results.json").write_text(json.dumps({
            "formulation": formulation, "members": [], "predictions": [],
            "metrics": {"val/auroc/mean": 0.5, **dict.fromkeys(TABLE_METRICS, 0.5)},
            "overrides": [f"formulation={formulation}", *extra]}))
    result = _run("formulation=binary,multiclass", *extra, "resume=true",
                  f"hydra.sweep.dir={tmp_path}", "-m", env=env)
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    assert log.count("is complete (results.json); skipping it") == 2, log
    assert "Comparison of 2 jobs" in log
    assert yaml.safe_load((tmp_path / "multirun.yaml").read_text())["model"]["backbone"] == backbone

"""Sweep hygiene through the real CLI: failed jobs, resume=true, and distinct sweep directories."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HELPERS = PROJECT_ROOT / "tests" / "helpers"
TINY = ["data.sample.n_subjects=40", "data.image_size=32", "trainer.max_epochs=1",
        "unfreeze.max_blocks=1", "logger=csv"]


def _train(*arguments: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    command = [sys.executable, "-m", "cxr_lightning.train", *arguments]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS), env.get("PYTHONPATH")]))
    if not wait:
        return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def failed_then_resumed(tmp_path_factory, cli_data):
    """A 2-job sweep whose second job fails in training (AdamW refuses a negative eps, which
    no config check covers), then the same sweep resumed."""
    home = tmp_path_factory.mktemp("sweeps")
    first = _train("-m", "formulation=multilabel", "+model.optimizer.eps=1e-8,-1",
                   f"paths.root_dir={home}", f"paths.data_dir={cli_data}", *TINY)
    (sweep,) = (home / "outputs" / "multiruns").iterdir()
    after_first = {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")}
    failure = json.loads((sweep / "1_multilabel" / "failed.json").read_text())
    failed_list = (sweep / "failed.txt").read_text()
    second = _train("-m", "formulation=multilabel", "+model.optimizer.eps=1e-8,1e-7",
                    f"paths.root_dir={home}", f"paths.data_dir={cli_data}",
                    f"hydra.sweep.dir={sweep}", "resume=true", *TINY)
    return {"first": first, "second": second, "sweep": sweep, "after_first": after_first,
            "failure": failure, "failed_list": failed_list}


def test_a_failed_job_is_recorded_and_the_others_complete(failed_then_resumed):
    first, sweep = failed_then_resumed["first"], failed_then_resumed["sweep"]
    assert first.returncode != 0  # the multirun ends with an error naming the failed job
    log = first.stdout + first.stderr
    assert "1 job(s) of the multirun" in log and "resume=true" in log
    assert "1_multilabel" in failed_then_resumed["failed_list"]
    assert "0_multilabel" not in failed_then_resumed["failed_list"]
    assert set(failed_then_resumed["after_first"]) == {"0_multilabel"}
    failure = failed_then_resumed["failure"]
    assert "+model.optimizer.eps=-1" in failure["overrides"]
    assert "Invalid epsilon value" in failure["error"] and "Traceback" in failure["traceback"]
    assert (sweep / "1_multilabel" / "config_resolved.yaml").is_file()


def test_resume_skips_complete_jobs_and_reruns_the_rest(failed_then_resumed):
    second, sweep = failed_then_resumed["second"], failed_then_resumed["sweep"]
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert f"{sweep / '0_multilabel'} is complete (results.json); skipping it" in log
    assert (sweep / "0_multilabel" / "results.json").stat().st_mtime_ns == (
        failed_then_resumed["after_first"]["0_multilabel"])
    assert not (sweep / "1_multilabel" / "failed.json").exists()
    rerun = json.loads((sweep / "1_multilabel" / "results.json").read_text())
    assert "+model.optimizer.eps=1e-07" in rerun["overrides"]
    assert rerun["config"]["model"]["optimizer"]["eps"] == 1e-7
    table = pd.read_csv(sweep / "comparison.csv")
    assert sorted(table["job"]) == ["0_multilabel", "1_multilabel"]


def test_two_sweeps_started_together_get_distinct_directories(tmp_path, cli_data):
    outputs = tmp_path / "outputs"
    launches = [_train("-m", "formulation=multilabel", "+model.optimizer.eps=-1", *TINY,
                       f"paths.root_dir={tmp_path / str(k)}", f"paths.data_dir={cli_data}",
                       f"paths.output_dir={outputs}",
                       wait=False)
                for k in range(2)]
    for launch in launches:
        launch.communicate(timeout=600)
    sweeps = sorted(p.name for p in (outputs / "multiruns").iterdir())
    assert len(sweeps) == 2 and sweeps[0] != sweeps[1]


def test_a_second_sweep_into_a_busy_sweep_directory_is_refused(tmp_path, cli_data):
    """Sweep A runs; sweep B, started into A's directory, is refused at once and touches
    nothing; A completes as if alone."""
    sweep = tmp_path / "sweep"
    common = ["-m", "formulation=multilabel", *TINY, f"paths.root_dir={tmp_path}",
              f"paths.data_dir={cli_data}", f"hydra.sweep.dir={sweep}"]
    release = tmp_path / "release"  # sweep A holds at its first batch until it exists
    first = _train(*common, "seed=1", "+callbacks.hold._target_=hold.HoldUntil",
                   f"+callbacks.hold.path={release}", wait=False)
    started = sweep / "0_multilabel" / "config_resolved.yaml"
    while not started.is_file() and first.poll() is None:
        time.sleep(0.5)
    kept = [sweep / "multirun.yaml", started]
    before = [p.stat().st_mtime_ns for p in kept]
    second = _train(*common, "seed=2")
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert (f"the sweep directory {sweep} is in use by another process"
            in second.stdout + second.stderr)
    assert [p.stat().st_mtime_ns for p in kept] == before
    release.touch()
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output[-3000:]
    assert "seed=1" in json.loads((sweep / "0_multilabel" / "results.json").read_text())[
        "overrides"]
    assert not list(sweep.glob("*/failed.json"))
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_multilabel"]

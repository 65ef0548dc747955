"""Same command, same numbers, through the real CLI: two runs agree bit for bit (0 and 2
DataLoader workers), and a run killed with SIGKILL mid-epoch, then resumed with ``resume=true``,
ends exactly where the uninterrupted run does."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning
import torch

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parents[1] / "helpers"
CHECKPOINTS = "${hydra:runtime.output_dir}/checkpoints/multilabel"
RUN = [
    "formulation=multilabel", "data.sample.n_subjects=40", "data.image_size=32",
    "data.batch_size=12", "data.augment=true", "trainer.max_epochs=2", "unfreeze.interval=1",
    "unfreeze.max_blocks=1",
    # a scheduler chosen on the command line: its state resumes too
    "model/scheduler=cosine",
    "logger=csv", "trainer.log_every_n_steps=1",
    # last.ckpt at step 9 too (a second ModelCheckpoint in the same directory), so the
    # kill at step 11 (epoch 1, after layer4.1 unfroze) resumes from step 9, mid-epoch
    "+callbacks.model_checkpoint.enable_version_counter=false",
    "+callbacks.steps._target_=pytorch_lightning.callbacks.ModelCheckpoint",
    f"+callbacks.steps.dirpath={CHECKPOINTS}", "+callbacks.steps.every_n_train_steps=9",
    "+callbacks.steps.save_top_k=0", "+callbacks.steps.save_last=true",
    "+callbacks.steps.enable_version_counter=false",
]
KILL = ["+callbacks.kill._target_=kill_switch.KillAtStep", "+callbacks.kill.step=11"]


def _train(home: Path, data: Path, run_dir: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "cxr_lightning.train", *RUN, f"paths.root_dir={home}",
               f"paths.data_dir={data}", f"hydra.run.dir={run_dir}", *arguments]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cli_data):
    """The same run with 0 and with 2 workers, and one killed at step 11 then resumed."""
    home = tmp_path_factory.mktemp("resume")
    done = {}
    for name, arguments in (("workers0", ["data.num_workers=0"]),
                            ("workers2", ["data.num_workers=2"]),
                            ("killed", ["data.num_workers=2", *KILL])):
        done[name] = _train(home, cli_data, home / name, *arguments)
    killed_log = (home / "killed" / "csv" / "multilabel" / "metrics.csv").read_text()
    done["resumed"] = _train(home, cli_data, home / "killed", "data.num_workers=2",
                             "resume=true")
    for name in ("workers0", "workers2", "resumed"):
        assert done[name].returncode == 0, done[name].stdout[-2000:] + done[name].stderr[-4000:]
    return {"home": home, "done": done, "killed_log": killed_log}


def _results(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    results["metrics"] = {k: v for k, v in results["metrics"].items() if "time" not in k}
    return results


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    path = run_dir / "checkpoints" / "multilabel" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_run(one: Path, two: Path) -> None:
    first, second = _results(one), _results(two)
    assert first["metrics"] == second["metrics"]  # every metric, CIs included, bit for bit
    assert first["predictions"] == second["predictions"]
    assert first["val_predictions"] == second["val_predictions"]
    weights, other = _final_weights(one), _final_weights(two)
    assert weights.keys() == other.keys()
    for key, value in weights.items():
        assert torch.equal(value, other[key]), key


def test_the_same_command_gives_the_same_numbers_with_any_number_of_workers(runs):
    _assert_same_run(runs["home"] / "workers0", runs["home"] / "workers2")


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(runs):
    assert runs["done"]["killed"].returncode == -signal.SIGKILL  # a real kill -9
    checkpoints = runs["home"] / "killed" / "checkpoints" / "multilabel"
    assert (checkpoints / "last.ckpt").is_file()
    assert "Resuming multilabel from" in runs["done"]["resumed"].stdout + \
        runs["done"]["resumed"].stderr
    _assert_same_run(runs["home"] / "workers0", runs["home"] / "killed")


def test_the_resumed_csv_log_holds_every_epoch_once(runs):
    straight = pd.read_csv(runs["home"] / "workers0" / "csv" / "multilabel" / "metrics.csv")
    resumed = pd.read_csv(runs["home"] / "killed" / "csv" / "multilabel" / "metrics.csv")
    killed = pd.read_csv(io.StringIO(runs["killed_log"]))
    assert killed["step"].max() >= 9  # the killed process logged steps past its checkpoint ...
    validation = resumed.dropna(subset=["val/loss"])
    assert validation["epoch"].tolist() == [0, 1]  # ... and every epoch is in the log once
    steps = resumed.dropna(subset=["train/loss_step"])
    straight_steps = straight.dropna(subset=["train/loss_step"])
    assert len(straight_steps) > 11  # the kill at step 11 came before the run's end
    assert steps["step"].tolist() == list(range(len(straight_steps)))  # each step once
    by_step = straight_steps.set_index("step")["train/loss_step"]
    assert np.array_equal(steps.set_index("step")["train/loss_step"], by_step)
    assert np.array_equal(validation.drop(columns="train/epoch_time_s").to_numpy(dtype=float),
                          straight.dropna(subset=["val/loss"]).drop(
                              columns="train/epoch_time_s").to_numpy(dtype=float),
                          equal_nan=True)


def test_results_record_how_to_reproduce_the_run(runs):
    record = _results(runs["home"] / "workers0")["reproducibility"]
    assert record["seed"] == 42 and record["deterministic"] is False
    versions = record["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["pytorch_lightning"] == pytorch_lightning.__version__
    assert versions["numpy"] == np.__version__
    assert versions["cudnn"] is None or torch.cuda.is_available()


def test_a_truncated_last_checkpoint_is_refused_naming_it(runs, cli_data):
    run = runs["home"] / "truncated"
    shutil.copytree(runs["home"] / "workers0", run)
    (run / "results.json").unlink()  # an unfinished run
    last = run / "checkpoints" / "multilabel" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100_000])
    resumed = _train(runs["home"], cli_data, run, "resume=true")
    assert resumed.returncode == 2
    output = resumed.stdout + resumed.stderr
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert f"{last} is damaged or truncated" in errors[0]
    assert "delete it to train multilabel again from the beginning" in errors[0]

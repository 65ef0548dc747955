"""trainer=ddp: 2-process DDP on the CPU (gloo) through the real CLI and the real DataModule, the
study's unfreezing schedule at one epoch per setting, fresh and after a mid-setting resume.

A probe callback (tests/helpers/rank_probe.py) writes, per rank, model and epoch, the training
samples' dataset indices, the validation metrics and every block's weights summed in float64:
the ranks must hold one model, the blocks unfrozen after DDP wrapped the module included.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.rank_probe import rank_differences

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parents[1] / "helpers"

BATCH_SIZE = 8
CHECKPOINTS = "${hydra:runtime.output_dir}/checkpoints/binary-edema"
RUN = [
    "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
    "trainer.sync_batchnorm=false",
    "formulation=binary",  # two fits in one run: the second starts a new process group
    "data.sample.n_subjects=40", "data.image_size=32", f"data.batch_size={BATCH_SIZE}",
    "unfreeze=study", "unfreeze.interval=1",  # head, +layer4.1, +layer4.0: one epoch each
    # last.ckpt every 3 steps too, so the failure at step 7 (epoch 1, the +layer4.1 setting,
    # 4 steps an epoch) resumes from step 6, mid-setting
    "+callbacks.model_checkpoint.enable_version_counter=false",
    "+callbacks.steps._target_=pytorch_lightning.callbacks.ModelCheckpoint",
    f"+callbacks.steps.dirpath={CHECKPOINTS}", "+callbacks.steps.every_n_train_steps=3",
    "+callbacks.steps.save_top_k=0", "+callbacks.steps.save_last=true",
    "+callbacks.steps.enable_version_counter=false",
    "+callbacks.probe._target_=rank_probe.RankProbe",
]


def _train(home: Path, data: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "cxr_lightning.train", *RUN, f"paths.root_dir={home}",
               f"paths.data_dir={data}", f"hydra.run.dir={home / 'run'}", *arguments]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, cli_data):
    """A run that fails mid-setting (its probes in ``failed/``), then resumed to the end."""
    home = tmp_path_factory.mktemp("ddp")
    probes = {}
    for name, arguments in (
        ("failed", ["+callbacks.fail._target_=rank_probe.FailAtStep", "+callbacks.fail.step=7"]),
        ("resumed", ["resume=true"]),
    ):
        (home / name).mkdir()
        done = _train(home, cli_data, f"+callbacks.probe.out={home / name}", *arguments)
        if name == "failed":
            assert done.returncode != 0 and "planned failure" in done.stderr, done.stderr[-3000:]
        else:
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        probes[name] = {p.stem: json.loads(p.read_text()) for p in (home / name).glob("*.json")}
    return {"run": home / "run", "home": home, "probes": probes}


def test_the_ranks_hold_one_model_at_every_epoch_fresh_and_resumed(ddp_run):
    failed, resumed = ddp_run["probes"]["failed"], ddp_run["probes"]["resumed"]
    # fresh: the edema model's first setting; resumed mid-setting: its other two, then the
    # effusion model from scratch
    assert {k for k in failed if k.startswith("rank0")} == {"rank0_edema_epoch0"}
    assert {k for k in resumed if k.startswith("rank0")} == {
        "rank0_edema_epoch1", "rank0_edema_epoch2",
        "rank0_effusion_epoch0", "rank0_effusion_epoch1", "rank0_effusion_epoch2"}
    for name in ("failed", "resumed"):
        assert rank_differences(ddp_run["home"] / name)[1] == {}
    # the blocks unfrozen after the wrap were trained (and compared) in the later settings
    for model in ("edema", "effusion"):
        assert resumed[f"rank0_{model}_epoch1"]["trainable"] == ["head", "layer4.1"]
        assert resumed[f"rank0_{model}_epoch2"]["trainable"] == ["head", "layer4.1", "layer4.0"]


def test_each_rank_trains_on_its_own_share_in_full_batches(ddp_run):
    manifest = pd.read_csv(ddp_run["run"] / "manifest.csv")
    n_train = int((manifest["split"] == "train").sum())
    probes = ddp_run["probes"]["resumed"]
    for epoch in (0, 1, 2):
        ranks = [probes[f"rank{r}_effusion_epoch{epoch}"] for r in (0, 1)]
        assert all(rank["world_size"] == 2 for rank in ranks)
        first, second = (rank["train_indices"] for rank in ranks)
        # an equal share each, in full batches only (drop_last): at most a batch short
        share = (n_train + 1) // 2
        assert len(first) == len(second) == share // BATCH_SIZE * BATCH_SIZE > 0
        assert len(set(first)) == len(first) and len(set(second)) == len(second)
        assert set(first) | set(second) <= set(range(n_train))
        # Disjoint but for the one sample DistributedSampler repeats to even an odd split.
        assert len(set(first) & set(second)) <= n_train % 2


def test_validation_metrics_are_synced_across_ranks(ddp_run):
    probes = ddp_run["probes"]["resumed"]
    for epoch in (0, 1, 2):
        rank0, rank1 = (probes[f"rank{r}_effusion_epoch{epoch}"]["val"] for r in (0, 1))
        assert set(rank0) >= {"val/auroc/mean", "val/auroc/effusion"}
        assert rank0 == rank1  # each rank scored half the validation set


def test_rank_zero_alone_writes_results_and_the_wandb_run(ddp_run):
    run = ddp_run["run"]
    results = json.loads((run / "results.json").read_text())
    manifest = pd.read_csv(run / "manifest.csv")
    test_ids = manifest.loc[manifest["split"] == "test", "image_id"].tolist()
    assert [p["image_id"] for p in results["predictions"]] == test_ids  # every test image once
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["binary-edema", "binary-effusion"]
    assert results["config"]["trainer"]["strategy"] == "ddp"
    assert [s["blocks"] for s in results["members"][0]["unfreeze_history"]] == [
        [], ["layer4.1"], ["layer4.0"]]

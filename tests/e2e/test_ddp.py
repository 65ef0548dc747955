"""trainer=ddp: a 2-process DDP run on CPU (gloo) through the real CLI and the real DataModule."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent('''
    """Per rank and epoch: the training samples' dataset indices and the validation metrics
    (of the last model trained: the binary formulation's effusion model)."""
    import json
    from pathlib import Path

    import pytorch_lightning as pl


    class RankProbe(pl.Callback):
        def __init__(self, out):
            self.out = Path(out)
            self.seen = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.extend(batch["index"].tolist())

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            name = f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.json"
            (self.out / name).write_text(json.dumps({
                "world_size": trainer.world_size, "train_indices": self.seen,
                "val": {k: float(v) for k, v in trainer.callback_metrics.items()
                        if k.startswith("val/auroc")}}))
''')


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, cli_data):
    home = tmp_path_factory.mktemp("ddp")
    probe_dir = home / "probe"
    probe_dir.mkdir()
    (home / "rank_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    env["PYTHONPATH"] = f"{home}{os.pathsep}{env.get('PYTHONPATH', '')}"
    command = [
        sys.executable, "-m", "cxr_lightning.train", "trainer=ddp", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.precision=32-true", "trainer.sync_batchnorm=false",
        "formulation=binary",  # two fits in one run: the second starts a new process group
        f"paths.root_dir={home}", f"paths.data_dir={cli_data}", "data.sample.n_subjects=40",
        "data.image_size=32",
        "trainer.max_epochs=2", "unfreeze.max_blocks=1",
        "+callbacks.probe._target_=rank_probe.RankProbe", f"+callbacks.probe.out={probe_dir}",
    ]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    (run,) = (home / "outputs" / "runs").iterdir()
    probes = {p.stem: json.loads(p.read_text()) for p in probe_dir.glob("*.json")}
    return {"run": run, "probes": probes, "log": done.stdout + done.stderr}


BATCH_SIZE = 32  # preset=sample's data.batch_size


def test_each_rank_trains_on_its_own_share_in_full_batches(ddp_run):
    manifest = pd.read_csv(ddp_run["run"] / "manifest.csv")
    n_train = int((manifest["split"] == "train").sum())
    for epoch in (0, 1):
        ranks = [ddp_run["probes"][f"rank{r}_epoch{epoch}"] for r in (0, 1)]
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
    for epoch in (0, 1):
        rank0, rank1 = (ddp_run["probes"][f"rank{r}_epoch{epoch}"]["val"] for r in (0, 1))
        assert set(rank0) >= {"val/auroc/mean", "val/auroc/effusion"}  # the effusion model
        assert rank0 == rank1  # each rank scored half the validation set


def test_rank_zero_alone_writes_results_and_the_wandb_run(ddp_run):
    run = ddp_run["run"]
    results = json.loads((run / "results.json").read_text())
    manifest = pd.read_csv(run / "manifest.csv")
    test_ids = manifest.loc[manifest["split"] == "test", "image_id"].tolist()
    assert [p["image_id"] for p in results["predictions"]] == test_ids  # every test image once
    assert len(list(run.glob("wandb/offline-run-*"))) == 1
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["binary-edema", "binary-effusion"]
    assert list((run.parent).iterdir()) == [run]  # the other rank wrote no directory of its own
    assert results["config"]["trainer"]["strategy"] == "ddp"

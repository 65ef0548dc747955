"""trainer=ddp with the prefix cache: two gloo ranks on one node build one store between them
and both train on it, through the real CLI."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent('''
    """Per rank: the shards it wrote and, per epoch, the kinds of batches it trained on. Shards
    of 16 rows, so the sample's train and val splits make several."""
    import json
    from pathlib import Path

    import pytorch_lightning as pl

    from cxr_lightning.data import activations

    activations.SHARD_ROWS = 16
    WRITTEN = []
    _write_shard = activations._write_shard


    def _recording_write_shard(directory, shard, rows):
        WRITTEN.append([Path(directory).name, shard])
        _write_shard(directory, shard, rows)


    activations._write_shard = _recording_write_shard


    class RankProbe(pl.Callback):
        def __init__(self, out):
            self.out = Path(out)
            self.kinds = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.kinds.append([])

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            kind = "activations" if "activations" in batch else "image"
            if kind not in self.kinds[-1]:
                self.kinds[-1].append(kind)

        def on_train_end(self, trainer, pl_module):
            (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(
                {"world_size": trainer.world_size, "written": WRITTEN, "kinds": self.kinds}))
''')


@pytest.fixture(scope="module")
def ddp_cache_run(tmp_path_factory, cli_data):
    home = tmp_path_factory.mktemp("ddp_cache")
    probe_dir = home / "probe"
    probe_dir.mkdir()
    (home / "cache_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    env["PYTHONPATH"] = f"{home}{os.pathsep}{env.get('PYTHONPATH', '')}"
    command = [
        sys.executable, "-m", "cxr_lightning.train", "trainer=ddp", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.precision=32-true", "trainer.sync_batchnorm=false",
        "formulation=multilabel", "logger=csv", f"paths.root_dir={home}",
        f"paths.data_dir={cli_data}", f"paths.cache_dir={home / 'cache'}",
        "data.sample.n_subjects=40", "data.image_size=32", "trainer.max_epochs=2",
        "unfreeze.interval=1", "unfreeze.max_blocks=1",
        "+callbacks.probe._target_=cache_probe.RankProbe", f"+callbacks.probe.out={probe_dir}",
    ]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    probes = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"home": home, "probes": probes}


def test_both_ranks_train_on_the_shared_cache(ddp_cache_run):
    for probe in ddp_cache_run["probes"]:
        assert probe["world_size"] == 2
        assert probe["kinds"] == [["activations"], ["activations"]]  # head, then + layer4.1


def test_the_ranks_split_the_building_of_each_store(ddp_cache_run):
    stores = sorted(p for p in (ddp_cache_run["home"] / "cache" / "activations").iterdir())
    assert [p.name.split("-")[0] for p in stores] == ["layer4.1", "pooled"]
    written = [sorted(map(tuple, probe["written"])) for probe in ddp_cache_run["probes"]]
    for store in stores:
        shards = sorted(int(p.stem.split("-")[1]) for p in store.glob("shard-*.npy"))
        assert len(shards) > 2
        mine = [[shard for name, shard in rank if name == store.name] for rank in written]
        assert mine == [shards[0::2], shards[1::2]]  # shard k by rank k % 2, each once

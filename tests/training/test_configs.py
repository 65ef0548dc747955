"""Every config composes; the paper configuration is the study's, and the sample preset differs
from it in a fixed list of keys."""

import inspect
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cxr_lightning.data.datamodule import CXRDataModule
from cxr_lightning.train import PROJECT_CONF_DIR


@pytest.mark.parametrize("data", ["mimic_cxr", "mimic_cxr_jpg", "nih", "chexpert"])
def test_data_configs_compose_with_known_arguments(data):
    with initialize_config_dir(config_dir=str(PROJECT_CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={data}", "data.root=/data"])
    arguments = set(inspect.signature(CXRDataModule.__init__).parameters) - {"self"}
    keys = set(OmegaConf.to_container(cfg.data)) - {"_target_"}
    assert keys <= arguments, keys - arguments
    assert cfg.data.source == data
    assert cfg.model.backbone == "resnet152"  # a dataset means the study's configuration


def test_sample_preset_keeps_an_explicit_model_choice():
    with initialize_config_dir(config_dir=str(PROJECT_CONF_DIR), version_base="1.3"):
        default = compose(config_name="train", overrides=["preset=sample"])
        chosen = compose(config_name="train", overrides=["preset=sample", "model=resnet152"])
    assert (default.model.backbone, default.data.source) == ("resnet18", "sample")
    assert (chosen.model.backbone, chosen.model.weights) == ("resnet152", "none")


def _compose(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(PROJECT_CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra)


def test_data_sample_is_the_mimic_adapter_on_the_generated_sample():
    cfg = _compose("data=sample")
    assert (cfg.data.source, cfg.data.sample.n_subjects) == ("sample", 400)
    assert cfg.data.root.endswith("mimic_cxr_sample/physionet.org/files/mimic-cxr/2.0.0")
    assert _compose("preset=sample").data == _compose("preset=sample", "data=sample").data


@pytest.mark.parametrize(("trainer", "expected"), [
    ("cpu", {"accelerator": "cpu", "devices": 1, "precision": "32-true"}),
    ("gpu", {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}),
    ("ddp", {"strategy": "ddp", "devices": "auto", "sync_batchnorm": True}),
])
def test_trainer_configs(trainer, expected):
    cfg = _compose(f"trainer={trainer}")
    assert {k: cfg.trainer[k] for k in expected} == expected
    assert cfg.trainer.max_epochs == 40  # the shared defaults stay


@pytest.mark.parametrize(("logger", "csv", "wandb"), [
    ("wandb", True, True), ("csv", True, False), ("none", False, False)])
def test_logger_configs(logger, csv, wandb):
    cfg = _compose(f"logger={logger}")
    assert (cfg.logger.csv, cfg.logger.wandb.enabled) == (csv, wandb)


@pytest.mark.parametrize("debug", ["fast", "overfit", "profile"])
def test_debug_overlays_shorten_the_run_and_keep_the_chosen_logger(debug):
    cfg = _compose("preset=sample", f"debug={debug}")
    assert cfg.trainer.max_epochs <= 30 and cfg.logger.wandb.enabled
    assert not _compose("preset=sample", f"debug={debug}", "logger=csv").logger.wandb.enabled


def test_every_wandb_setting_is_overridable():
    settings = {"entity": "myteam", "project": "edema", "group": "g1", "notes": "first try",
                "mode": "online", "log_model": True, "tags": ["a", "b"]}
    overrides = [f"logger.wandb.{k}={v}" for k, v in settings.items() if k != "tags"]
    cfg = _compose(*overrides, "logger.wandb.tags=[a,b]")
    assert {k: OmegaConf.to_object(cfg.logger.wandb)[k] for k in settings} == settings


def test_experiments_set_their_sweeps():
    exp1 = _compose("experiment=exp1_unfreeze", hydra=True)
    assert exp1.formulation.name == "multiclass" and exp1.stage_metrics
    assert dict(exp1.hydra.sweeper.params) == {"unfreeze.interval": "5,10,15",
                                               "unfreeze.max_blocks": "1,3,6"}
    exp2 = _compose("experiment=exp2_formulations", hydra=True)
    assert dict(exp2.hydra.sweeper.params) == {"formulation": "binary,multilabel,multiclass",
                                               "seed": "1,2,3"}


def test_optuna_search_and_slurm_launcher_compose():
    optuna = _compose("hparams_search=optuna", hydra=True)
    assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert optuna.hydra.sweeper.direction == "maximize"
    assert optuna.optimized_metric == "val/auroc/mean"
    slurm = _compose("hydra/launcher=slurm", hydra=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (slurm.hydra.launcher.gpus_per_node, slurm.hydra.launcher.timeout_min) == (1, 1440)


def test_run_and_sweep_directories_carry_a_launch_token():
    cfg = _compose(hydra=True)
    assert "${unique:}" in OmegaConf.to_container(cfg.hydra.sweep)["dir"]
    assert "${unique:}" in OmegaConf.to_container(cfg.hydra.run)["dir"]


def _flat(node, prefix=""):
    """``{dotted.key: value}`` of a config's leaves, interpolations unresolved."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


SAMPLE_DIFFERENCES = {
    # the data source: the generated sample instead of MIMIC-CXR
    "data.root", "data.labels_root", "data.source", "data.sample.n_subjects", "data.sample.seed",
    # the backbone (model=resnet18: its own default lr) without pretrained weights
    "model.backbone", "model.lr", "model.weights",
    # image size, and what a few CPU cores need
    "data.image_size", "data.batch_size", "data.num_workers", "data.cache_workers",
}


def test_sample_preset_differs_from_the_paper_configuration_in_the_documented_keys_only():
    paper = _flat(OmegaConf.to_container(_compose("data.root=/mimic")))
    sample = _flat(OmegaConf.to_container(_compose("preset=sample")))
    differing = {key for key in paper.keys() | sample.keys() if paper.get(key) != sample.get(key)}
    assert differing == SAMPLE_DIFFERENCES


def test_paper_configuration_is_the_study():
    cfg = _compose("data.root=/mimic")
    assert (cfg.model.backbone, cfg.model.weights, cfg.data.image_size) == (
        "resnet152", "imagenet", 512)
    unfreeze = cfg.unfreeze
    assert (unfreeze.interval, unfreeze.last_stage_epochs, unfreeze.until) == (10, 10, "layer4.0")
    assert (unfreeze.blocks_per_step, unfreeze.monitor, unfreeze.patience) == (
        1, "val/auroc/mean", 3)
    assert unfreeze.schedule is None and unfreeze.restore_best
    assert cfg.trainer.max_epochs == 40 == unfreeze.interval * (1 + 3)
    assert (cfg.data.split, cfg.data.augment) == ("random_patient", False)
    assert cfg.trainer.precision == "32-true"  # no CUDA here; bf16-mixed on a GPU that has it


def test_table1_experiment_runs_the_quarter_schedule_for_80_epochs():
    cfg = _compose("experiment=exp1_table1")
    assert cfg.trainer.max_epochs == 80 and cfg.stage_metrics
    assert cfg.formulation.name == "multiclass"
    assert [list(step) for step in cfg.unfreeze.schedule] == [
        [35, ["layer4.2"]], [50, ["layer4.1", "layer4.0"]],
        [70, ["layer3.35", "layer3.34", "layer3.33"]]]


def test_cfg_job_on_a_mimic_root_shows_the_study_schedule(tmp_path):
    shown = subprocess.run(
        [sys.executable, "-m", "cxr_lightning.train", "--cfg", "job", f"data.root={tmp_path}"],
        capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    job = OmegaConf.create(shown)
    assert job.trainer.max_epochs == 40
    assert (job.data.split, job.data.augment) == ("random_patient", False)
    assert (job.unfreeze.interval, job.unfreeze.until, job.unfreeze.patience) == (
        10, "layer4.0", 3)
    assert job.unfreeze.last_stage_epochs == 10

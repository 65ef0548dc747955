"""Every data config composes, and its keys are the DataModule's arguments."""

import inspect

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
    assert cfg.data.root.endswith("mimic_cxr_sample")
    assert _compose("preset=sample").data == _compose("preset=sample", "data=sample").data


@pytest.mark.parametrize(("trainer", "expected"), [
    ("cpu", {"accelerator": "cpu", "devices": 1, "precision": "32-true"}),
    ("gpu", {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}),
    ("ddp", {"strategy": "ddp", "devices": "auto", "sync_batchnorm": True}),
])
def test_trainer_configs(trainer, expected):
    cfg = _compose(f"trainer={trainer}")
    assert {k: cfg.trainer[k] for k in expected} == expected
    assert cfg.trainer.max_epochs == 200  # the shared defaults stay


@pytest.mark.parametrize(("logger", "csv", "wandb"), [
    ("wandb", True, True), ("csv", True, False), ("none", False, False)])
def test_logger_configs(logger, csv, wandb):
    cfg = _compose(f"logger={logger}")
    assert (cfg.logger.csv, cfg.logger.wandb.enabled) == (csv, wandb)


@pytest.mark.parametrize("debug", ["fast", "overfit", "profile"])
def test_debug_overlays_shorten_the_run_and_turn_wandb_off(debug):
    cfg = _compose("preset=sample", f"debug={debug}")
    assert cfg.trainer.max_epochs <= 30 and not cfg.logger.wandb.enabled


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

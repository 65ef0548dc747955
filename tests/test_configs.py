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

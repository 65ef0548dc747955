"""Configuration mistakes are one-line user errors, found where the config is composed: each
mistake is composed by Hydra and checked by :func:`check_ranges`, the function a job calls
first (one real launch in tests/e2e/test_user_errors.py checks its exit status 2)."""

import pytest
from hydra import compose, initialize_config_dir

from cxr_lightning.config_checks import check_ranges
from cxr_lightning.errors import BadValueError
from cxr_lightning.train import PROJECT_CONF_DIR


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(PROJECT_CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize(("override", "expected"), [
    ("data.batch_size=0", "data.batch_size=0: expected an integer >= 1"),
    ("unfreeze.interval=0", "unfreeze.interval=0: expected an integer >= 1 or null"),
    ("model.lr=-0.001", "model.lr=-0.001: expected a number > 0"),
    ("model.lr=0", "model.lr=0: expected a number > 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0: expected an integer >= 1 or -1"),
    ("data.batch_size=2.5", "data.batch_size=2.5: expected an integer >= 1"),
    ("data.num_workers=-1", "data.num_workers=-1: expected an integer >= 0"),
])
def test_a_value_out_of_range_is_a_one_line_error(override, expected):
    with pytest.raises(BadValueError) as error:
        check_ranges(_compose("preset=sample", override))
    message = str(error.value)
    assert message.startswith(expected) and "\n" not in message
    assert f"e.g. {override.split('=')[0]}=" in message  # the override that fixes it


@pytest.mark.parametrize("overrides", [
    ["preset=sample"], ["preset=paper"], ["preset=sample", "unfreeze=table1"],
    ["preset=sample", "trainer.max_epochs=-1", "model.lr=1"],
    ["preset=sample", "debug=fast"], ["preset=sample", "experiment=exp2_formulations"],
], ids=" ".join)
def test_the_shipped_configs_pass(overrides):
    check_ranges(_compose(*overrides))

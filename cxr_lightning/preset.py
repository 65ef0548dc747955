"""Which preset a launch runs: ``preset=auto`` in ``conf/train.yaml`` resolves to a preset here.

The defaults list holds ``- preset: ${auto_preset:}``; Hydra resolves that interpolation while
it composes the defaults, so the choice is part of the configuration (``--cfg``, ``--info``,
``hydra.runtime.choices.preset``) and every Hydra flag keeps working. The rule:

* ``preset=...`` on the command line wins (Hydra applies it; the rule is not consulted);
* a dataset is configured (``MIMIC_CXR_ROOT`` in the environment, or ``data.root=...`` or
  ``data=...`` on the command line): ``paper``, the study's configuration;
* otherwise, on the command line: ``sample``, the embedded MIMIC-CXR-format sample.

Hydra's compose API (tests, notebooks) has no command line: there ``auto`` is ``paper`` unless
``MIMIC_CXR_ROOT`` is unset *and* the entry point registered a command line (it does not), so a
composed config is the study's, as the base config says; pass ``preset=sample`` for the sample.
"""

from __future__ import annotations

import os

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

PAPER, SAMPLE = "paper", "sample"
DATASET_VARIABLE = "MIMIC_CXR_ROOT"
_DATASET_KEYS = ("data", "data.root")

_command_line: list[str] | None = None  # the launch's overrides, when launched as a command


def use_command_line(argv: list[str]) -> None:
    """Let ``preset=auto`` read the launch's overrides (``argv`` without the program name)."""
    global _command_line
    _command_line = get_args_parser().parse_known_args(argv)[0].overrides


def choose() -> tuple[str, str]:
    """The preset ``auto`` stands for, and why (one sentence, for ``--help`` and the log)."""
    keys = [] if _command_line is None else [
        o.get_key_element().lstrip("+~") for o in OverridesParser.create().parse_overrides(
            _command_line)]
    if "preset" in keys:
        return "", "preset chosen on the command line"
    if os.environ.get(DATASET_VARIABLE):
        return PAPER, f"{DATASET_VARIABLE} is set: the study's configuration on that dataset"
    given = [k for k in keys if k in _DATASET_KEYS]
    if given:
        return PAPER, f"{given[0]}=... is given: the study's configuration on that dataset"
    if _command_line is None:
        return PAPER, "no command line (compose API): the study's configuration"
    return SAMPLE, (f"no dataset is configured, so the embedded MIMIC-CXR-format sample with a "
                    f"small model; set {DATASET_VARIABLE} or data.root=... for MIMIC-CXR")


def auto_preset() -> str:
    """``${auto_preset:}``: the preset's name, for the defaults list."""
    return choose()[0] or PAPER


def auto_preset_reason() -> str:
    """``${auto_preset_reason:}``: why, for ``hydra.help``."""
    return choose()[1]


for _name, _resolver in (("auto_preset", auto_preset), ("auto_preset_reason", auto_preset_reason)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)

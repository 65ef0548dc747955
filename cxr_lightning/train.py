"""Train, test and record one formulation per job: ``python -m cxr_lightning.train``.

``python -m cxr_lightning.train -m formulation=binary,multilabel,multiclass`` runs the three
formulations as a Hydra multirun and ends with a comparison table. Without MIMIC-CXR configured
(``data.root=...`` or the environment variable ``MIMIC_CXR_ROOT``) the ``preset=sample`` overlay
is selected: the embedded MIMIC-CXR-format sample with a small, fast model. Otherwise the base
config is the study's: ResNet152 at 512x512, ImageNet weights.

Every job writes ``config_resolved.yaml`` first, then ``results.json`` when it completes, or
``failed.json`` (the error and its traceback) when it fails: a failed job is recorded and the
rest of the sweep goes on. With ``resume=true``, a job whose ``results.json`` is complete is
skipped. Under DDP every rank trains; rank zero alone predicts and writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cxr_lightning import preset, resolvers  # noqa: F401  (registers the config's resolvers)
from cxr_lightning.console import quiet_console

# The configuration: conf/ beside the package in a checkout, cxr_lightning/conf in an install.
PROJECT_CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
CONFIG_PATH = (str(PROJECT_CONF_DIR) if (PROJECT_CONF_DIR / "train.yaml").is_file()
               else "pkg://cxr_lightning.conf")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra entry point (one job of a run or multirun)."""
    # Imported here, not above: --help, --info and --cfg only compose the config, and the
    # training stack (torch, Lightning, W&B) takes seconds to import.
    from cxr_lightning.job import run_job

    quiet_console()  # after Hydra has configured the job's logging
    return run_job(cfg)


def main() -> None:
    """The command: Hydra, with ``preset=auto`` reading the command line (:mod:`preset`)."""
    preset.use_command_line(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()

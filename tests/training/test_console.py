"""The quiet console: filtered noise, summary lines, and the commands' --help."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from cxr_lightning import predict
from cxr_lightning.console import LIGHTNING_CHATTER, MessageFilter, quiet_console, summarised

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_summarised_counts_matching_records_and_says_so_once(caplog):
    logger = logging.getLogger("test_console.summarised")
    with (caplog.at_level(logging.INFO, logger=logger.name),
          summarised(logger.name, "is constant", "{count} constant maps, e.g. {examples}",
                     examples=2) as counted):
        for name in "abcde":
            logger.warning("%s.png: the map is constant", name)
        logger.info("unrelated one")
        logger.warning("unrelated two")
    messages = [r.getMessage() for r in caplog.records]
    # 5 matching records (counted, not shown), 2 others shown, 1 summary
    assert messages == ["unrelated one", "unrelated two",
                        "5 constant maps, e.g. a.png: the map is constant; "
                        "b.png: the map is constant"]
    assert len(counted) == 5
    logger.warning("x.png: the map is constant")  # outside the block: shown as it is
    assert caplog.records[-1].getMessage() == "x.png: the map is constant"


def test_no_summary_without_matching_records(caplog):
    with caplog.at_level(logging.INFO), summarised("test_console.none", "never", "{count}"):
        logging.getLogger("test_console.none").info("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


@pytest.mark.parametrize(("message", "dropped"), [
    ("💡 Tip: For seamless cloud logging, try installing [litlogger]", True),
    ("GPU available: False, used: False", True),
    ("TPU available: False, using: 0 TPU cores", True),
    ("Seed set to 42", True),
    ("Restoring states from the checkpoint path at /x/best.ckpt", True),
    ("Loaded model weights from the checkpoint at /x/best.ckpt", True),
    ("`Trainer.fit` stopped: `max_epochs=2` reached.", False),
    ("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.", False),
])
def test_lightning_chatter_filter(message, dropped):
    record = logging.LogRecord("pytorch_lightning.utilities.rank_zero", logging.INFO, __file__,
                               1, message, None, None)
    assert MessageFilter(LIGHTNING_CHATTER).filter(record) is not dropped


def test_third_party_deprecation_is_filtered_and_others_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_console()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, "
                      "TreeSpec) and treespec.is_leaf()` instead.", DeprecationWarning,
                      stacklevel=1)
        warnings.warn("something else is deprecated", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


MODULES = {"cxr-predict": "cxr_lightning.predict", "cxr-export": "cxr_lightning.export",
           "cxr-report": "cxr_lightning.report", "cxr-cache": "cxr_lightning.data.cache",
           "cxr-cohort": "cxr_lightning.data.cohort", "cxr-sample": "cxr_lightning.data.sample"}
MARKUP = re.compile(r":\w+:`|``|\*\*\w[^*]*\*\*")  # roles, literals, **bold** (not a glob's **/)


@pytest.mark.parametrize("script", sorted(MODULES))
def test_help_names_the_program_and_has_no_markup(script):
    module = MODULES[script]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    typed = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert typed.returncode == 0, typed.stderr
    assert typed.stdout.startswith(f"usage: python -m {module} ")
    assert MARKUP.search(typed.stdout) is None, typed.stdout
    # as the console script: argv[0] is the script's path
    code = (f"import sys; sys.argv[0] = '/venv/bin/{script}'; from cxr_lightning import commands; "
            f"sys.exit(commands.{script.removeprefix('cxr-')}())")
    as_script = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True,
                               text=True, env=env, timeout=120)
    assert as_script.returncode == 0, as_script.stderr
    assert as_script.stdout.startswith(f"usage: {script} ")


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--batch-size N images per forward pass (default: 16)" in out
    assert "--ckpt PATH the model: a job's model.pt (or a multilabel/multiclass .ckpt)" \
           " --inputs" in out  # required: no default shown


FILTERED = re.compile(r"💡 Tip|[GT]PU available: |Seed set to|LeafSpec|anonymous setting|v_num"
                      r"|Restoring states from|Loaded model weights")
# The warning lines a short sample run may print, each actionable: the bootstrap summary (once
# per job) and Lightning's log_every_n_steps hint (a sample this small has 2 batches an epoch).
ALLOWED_WARNINGS = re.compile(r"\]\[WARNING\] - Bootstrap CIs: |fit_loop\.py:\d+: The number of "
                              r"training batches")


@pytest.mark.slow
def test_a_short_training_prints_no_noise(tmp_path, cli_data):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "cxr_lightning.train", "formulation=binary",
         "data.sample.n_subjects=40", "data.image_size=32", "trainer.max_epochs=2",
         "unfreeze.interval=1", "unfreeze.max_blocks=1", f"paths.root_dir={tmp_path}",
         f"paths.data_dir={cli_data}"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).replace("\r", "\n").splitlines()
    assert [line for line in lines if FILTERED.search(line)] == []
    warned = [line for line in lines if re.search(r"warn|/site-packages/.*\.py:\d+: ", line, re.I)]
    assert [line for line in warned if not ALLOWED_WARNINGS.search(line)] == []
    assert sum("Bootstrap CIs: " in line for line in warned) == 1  # one job, one summary
    # stage changes are whole log lines of their own, never glued to a progress bar
    stages = [line for line in lines if "unfreezing stage 1/1 unfroze" in line]
    assert len(stages) == 2 and all(line.startswith("[20") for line in stages), stages

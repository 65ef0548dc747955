"""The wheel carries the configuration: built from the sources, installed into a bare folder and
run from outside the repository, ``cxr-train`` composes its config from ``pkg://cxr_lightning.conf``."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A folder holding the installed wheel (package, its conf, the console scripts)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so that the build leaves nothing in the checkout
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name if source.exists() else _mkdir(source) / name)
    for name in ("cxr_lightning", "conf"):
        shutil.copytree(REPO / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist",
                    source], check=True, timeout=120)
    wheel, = (tmp / "dist").glob("cxr_lightning-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp / "site", wheel], check=True,
                   timeout=120)
    return tmp / "site"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _run(installed: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MIMIC_CXR_ROOT"}
    env["PYTHONPATH"] = str(installed)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def test_the_installed_package_is_the_wheels(installed, tmp_path):
    result = _run(installed, sys.executable, "-c",
                  "import cxr_lightning.train as t; print(t.__file__, t.CONFIG_PATH)",
                  cwd=tmp_path)
    assert result.stdout.split() == [str(installed / "cxr_lightning" / "train.py"),
                                     "pkg://cxr_lightning.conf"], result.stderr


def test_cxr_train_runs_from_outside_the_repository(installed, tmp_path):
    result = _run(installed, sys.executable, str(installed / "bin" / "cxr-train"),
                  "formulation=binary", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "backbone: resnet18" in result.stdout and "name: binary" in result.stdout


SCRIPTS = ["cxr-train", "cxr-predict", "cxr-export", "cxr-report", "cxr-cache", "cxr-cohort",
           "cxr-sample", "cxr-study"]


def test_console_scripts(installed, tmp_path):
    assert sorted(p.name for p in (installed / "bin").iterdir()) == sorted(SCRIPTS)
    result = _run(installed, sys.executable, str(installed / "bin" / "cxr-cohort"), "--help",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: cxr-cohort")

"""Run the study's parts in order into one study directory, resumably.

Every training part is a ``cxr-train -m ... hydra.sweep.dir=<study>/<part>`` multirun through
the real CLI (its output in ``<part>/cxr-train.log``), with ``resume=true`` once a job of it has
started (``cxr-train`` refuses a resume with nothing to resume): complete jobs
(results.json, written last) are skipped, so a rerun after a kill or a failure redoes nothing
complete, and a failed job leaves the sweep's other jobs and the later parts running. The cohort
and cache parts use the resolved configuration of the same overrides (``config.yaml``), and
write their record last. ``study.json`` records each part's overrides, command and status.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cxr_lightning.data.cohort import cohort_summary, write_download_list
from cxr_lightning.data.sources import build_manifest
from cxr_lightning.errors import BadValueError
from cxr_lightning.job_record import JobRecord, sweep_jobs
from cxr_lightning.report.study import (
    PART_DIRS,
    STUDY_FILE,
    TABLE2_FILE,
    compile_study,
    write_study_report,
)
from cxr_lightning.report.study_tables import table2
from cxr_lightning.study.parts import Part, sweep_size
from cxr_lightning.study.progress import Progress

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
DONE_FILE = "done.json"
DOWNLOAD_LIST = "download-list.txt"
TRAIN_LOG = "cxr-train.log"
POLL_SECONDS = 5.0
TRAIN = (sys.executable, "-m", "cxr_lightning.train")


class Study:
    """A study directory, its preset and the user's overrides common to all its parts (after
    each part's own, so that they win)."""

    def __init__(self, study_dir: Path, preset: str, overrides: list[str], seeds: int) -> None:
        self.dir = Path(study_dir)
        self.preset = f"preset={preset}"
        self.overrides = overrides
        self.state: dict[str, Any] = {"preset": preset, "seeds": seeds,
                                      "overrides": overrides, "parts": {}}
        if (self.dir / STUDY_FILE).is_file():
            self.state["parts"] = json.loads((self.dir / STUDY_FILE).read_text())["parts"]

    def save(self) -> None:
        """Write study.json (atomically)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = self.dir / f"{STUDY_FILE}.partial"
        partial.write_text(json.dumps(self.state, indent=2))
        partial.replace(self.dir / STUDY_FILE)

    def config(self) -> DictConfig:
        """The resolved configuration of the common overrides (``cxr-train --cfg job``), saved
        as config.yaml the first time."""
        path = self.dir / CONFIG_FILE
        if not path.is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            shown = subprocess.run([*TRAIN, "--cfg", "job", "--resolve", self.preset,
                                    *self.overrides], capture_output=True, text=True)
            if shown.returncode != 0:
                first = (shown.stderr.strip().splitlines() or ["(no message)"])[0]
                raise BadValueError(f"cxr-train refuses the study's overrides {self.overrides}: "
                                    f"{first}")
            path.write_text(shown.stdout)
        return OmegaConf.create(yaml.safe_load(path.read_text()))

    def train_overrides(self, part: Part) -> list[str]:
        """The overrides of a training part's multirun."""
        return [self.preset, *part.overrides, *self.overrides]

    def jobs(self, part: Part) -> int:
        """How many jobs ``part`` runs."""
        return sweep_size(self.train_overrides(part)) if part.trains else 1

    def done_jobs(self, part: Part) -> tuple[int, int]:
        """(complete, failed) jobs of ``part`` in its directory."""
        directory = self.dir / PART_DIRS.get(part.name, part.name)
        if not part.trains:
            return int((directory / DONE_FILE).is_file()), 0  # the report: never (it reruns)
        jobs = sweep_jobs(directory) if directory.is_dir() else []
        complete = sum(job.results_path.is_file() for job in jobs)
        return complete, sum(not job.results_path.is_file() for job in jobs)

    def run(self, parts: list[Part]) -> bool:
        """Run ``parts`` in order, skipping complete ones; True when all of them completed."""
        self.save()
        progress = Progress(self.dir, sum(self.jobs(p) for p in parts),
                            {p.name: self.done_jobs(p)[0] for p in parts})
        all_ok = True
        for part in parts:
            done, _ = self.done_jobs(part)
            if done >= self.jobs(part):
                log.info("[study] part %s is complete: skipped", part.name)
                continue
            record = self.state["parts"].setdefault(part.name, {})
            record.update(status="running", overrides=list(part.overrides))
            self.save()
            start = time.monotonic()
            progress.start_part()
            progress.update(part.name, done, self.jobs(part), timed=part.trains)
            ok = self._run_part(part, record, progress)
            record.update(status="done" if ok else "failed",
                          seconds=round(time.monotonic() - start, 1))
            self.save()
            counts = self._counts(part) if part.trains else (int(ok), 1, int(not ok))
            progress.update(part.name, *counts, timed=part.trains)
            all_ok &= ok
        return all_ok

    def _run_part(self, part: Part, record: dict[str, Any], progress: Progress) -> bool:
        directory = self.dir / PART_DIRS.get(part.name, part.name)
        if part.trains:
            return self._train(part, directory, record, progress)
        if part.name == "report":
            record["path"] = str(write_study_report(compile_study(self.dir)))
            return True
        directory.mkdir(parents=True, exist_ok=True)
        datamodule = instantiate(self.config().data)
        if part.name == "cohort":
            datamodule.ensure_sample()
            manifest, report = build_manifest(datamodule.source, datamodule.root,
                                              datamodule.options)
            cohort_summary(manifest, report).to_csv(directory / "cohort.csv")
            table2(manifest).to_csv(directory / TABLE2_FILE, index=False)
            write_download_list(manifest, directory / DOWNLOAD_LIST)
            done = {"images": len(manifest), "root": str(datamodule.root)}
        else:
            datamodule.prepare_data()
            done = {"images": len(datamodule.manifest), "cache": str(datamodule.cache_dir)}
        (directory / DONE_FILE).write_text(json.dumps(done))
        return True

    def _train(self, part: Part, directory: Path, record: dict[str, Any],
               progress: Progress) -> bool:
        started = directory.is_dir() and any(
            JobRecord(job).has_started_before() for job in directory.iterdir() if job.is_dir())
        command = [*TRAIN, "-m", *self.train_overrides(part), f"hydra.sweep.dir={directory}",
                   *(["resume=true"] if started else [])]
        record["command"] = command
        self.save()
        directory.mkdir(parents=True, exist_ok=True)
        log.info("[study] part %s: %s (output in %s)", part.name, " ".join(command[2:]),
                 directory / TRAIN_LOG)
        with open(directory / TRAIN_LOG, "a") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
            while process.poll() is None:
                time.sleep(POLL_SECONDS)
                progress.update(part.name, *self._counts(part))
        if process.returncode != 0:
            log.error("[study] part %s ended with exit status %d (see %s); the other parts go "
                      "on", part.name, process.returncode, directory / TRAIN_LOG)
        return process.returncode == 0

    def _counts(self, part: Part) -> tuple[int, int, int]:
        done, failed = self.done_jobs(part)
        return done, self.jobs(part), failed

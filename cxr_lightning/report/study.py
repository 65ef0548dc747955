"""The report of a whole study directory (``cxr-study``'s): ``REPORT.md`` and its figures.

A study directory holds ``study.json`` (what ran) and one directory per part
(:data:`PART_DIRS`): the cohort's tables, the cache's record, and three multiruns (the baseline,
Table 1's schedule, experiment II). The report sets each beside the study's published figures
(:mod:`cxr_lightning.published`) and lists how the run departs from the study.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_lightning import published
from cxr_lightning.evaluation.bootstrap import N_BOOTSTRAP
from cxr_lightning.findings import FINDINGS
from cxr_lightning.job_record import sweep_jobs
from cxr_lightning.report import markdown
from cxr_lightning.report.build import (
    SweepReport,
    comparison_section,
    compile_report,
    report_figures,
    table1_section,
    write_report_files,
)
from cxr_lightning.report.study_tables import departures, stopping_epochs, table3_with_published

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
REPORT_FILE = "REPORT.md"
FIGURES_DIR = "report"
PART_DIRS: dict[str, str] = {"cohort": "1_cohort", "cache": "2_cache", "baseline": "3_baseline",
                             "table1": "4_table1", "formulations": "5_formulations"}
"""Each part's directory in a study directory, in the order the parts run."""
TABLE2_FILE = "table2.csv"
SWEEP_PARTS = ("baseline", "table1", "formulations")


def is_study_dir(path: Path) -> bool:
    """Whether ``path`` is a study directory (it holds ``study.json``)."""
    return (Path(path) / STUDY_FILE).is_file()


@dataclass
class StudyReport:
    """The numbers of a study directory's report; ``None`` for a part without results."""

    study_dir: Path
    state: dict[str, Any]
    table2: pd.DataFrame | None
    baseline: pd.DataFrame | None
    table1: SweepReport | None
    formulations: SweepReport | None
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _completed_results(sweep_dir: Path) -> list[dict[str, Any]]:
    if not sweep_dir.is_dir():
        return []
    return [results for job in sweep_jobs(sweep_dir) if (results := job.read_results())]


def compile_study(study_dir: Path, n_bootstrap: int = N_BOOTSTRAP) -> StudyReport:
    """Read a study directory: each part's tables and results, whatever completed."""
    study_dir = Path(study_dir)
    state = json.loads((study_dir / STUDY_FILE).read_text())
    table2_path = study_dir / PART_DIRS["cohort"] / TABLE2_FILE
    results = {part: _completed_results(study_dir / PART_DIRS[part]) for part in SWEEP_PARTS}
    sweeps = {part: compile_report(study_dir / PART_DIRS[part], n_bootstrap)
              if results[part] and part != "baseline" else None for part in SWEEP_PARTS}
    return StudyReport(
        study_dir=study_dir, state=state,
        table2=pd.read_csv(table2_path) if table2_path.is_file() else None,
        baseline=stopping_epochs(results["baseline"][0]["members"]) if results["baseline"]
        else None,
        table1=sweeps["table1"], formulations=sweeps["formulations"],
        configs={part: found[0].get("config", {}) for part, found in results.items() if found})


def published_accuracy(table3: pd.DataFrame) -> pd.DataFrame:
    """Figure 5's published points: the study's accuracy per setting of ``table3`` and finding."""
    rows = [{"setting": row.setting, "finding": finding,
             "accuracy": published.TABLE3.get(row.formulation, {}).get(f"test/acc/{finding}")}
            for row in table3.itertuples() for finding in FINDINGS]
    return pd.DataFrame(rows, columns=["setting", "finding", "accuracy"])


def _missing(part: str) -> str:
    return (f"Not available: the `{part}` part has no completed result in this directory "
            "(rerun `cxr-study` on it to continue).")


def study_markdown(report: StudyReport, figure_list: list) -> str:
    """REPORT.md's text; figures are linked under :data:`FIGURES_DIR`."""
    state = report.state
    seeds = int(state.get("seeds", 1))
    parts = state.get("parts", {})
    sections = [
        f"# The study, rerun: `{report.study_dir.name}`",
        f"Preset `{state.get('preset')}`, {seeds} seed(s) in experiment II. Parts: "
        + ", ".join(f"{name} ({info.get('status')})" for name, info in parts.items()
                    if name != "report") + "; `study.json` records each part's command.",
        "## How this run differs from the study",
        "\n".join(f"- {note}" for note in departures(report.configs, seeds)) or "- none found",
        "## Table 2: the cohort beside the study's",
        f"The study's counts: {published.TABLE2_SOURCE}."]
    sections.append(report.table2.to_markdown(index=False) if report.table2 is not None
                    else _missing("cohort"))
    sections += ["## The baseline: where early stopping ended it",
                 f"The study set its {published.BASELINE_EPOCHS} epochs per setting from one run: "
                 "a binary edema classifier with every backbone layer frozen, trained until early "
                 "stopping. Ours (`experiment=baseline_frozen`):"]
    sections.append(report.baseline.to_markdown(index=False) if report.baseline is not None
                    else _missing("baseline"))
    sections += ["## Table 1's schedule, rerun on this data (not the study's Table 1)",
                 "The study's Table 1 came from an earlier regression task (a BNPP serum "
                 "biomarker, on other data, scored by MAE); only its schedule (stages starting "
                 "at epochs 35, 50, 70 of 80) carries over, so no published figure sits beside "
                 "these: each stage's best checkpoint, tested."]
    sections.append(table1_section(report.table1) if report.table1 is not None
                    else _missing("table1"))
    sections += ["## Table 3 beside the study's", f"The study's rows: {published.TABLE3_SOURCE};"
                 " `–` where it publishes no figure."]
    if report.formulations is None:
        sections += [_missing("formulations")]
    else:
        sections += [markdown.table3_markdown(table3_with_published(report.formulations.table3)),
                     "## Paired tests between formulations",
                     comparison_section(report.formulations)]
        for item in figure_list:
            sections += [f"## {item.caption}",
                         f"![{item.caption}]({FIGURES_DIR}/{item.name}.png)\n\nNumbers: "
                         f"[{item.name}.csv]({FIGURES_DIR}/{item.name}.csv)"]
    return "\n\n".join(sections) + "\n"


def write_study_report(report: StudyReport) -> Path:
    """Write REPORT.md into the study directory and the figures and tables of experiment II
    into its :data:`FIGURES_DIR`; returns REPORT.md's path."""
    figure_list = []
    if report.formulations is not None:
        figure_list = report_figures(report.formulations,
                                     published_accuracy(report.formulations.table3))
        write_report_files(report.formulations, figure_list, report.study_dir / FIGURES_DIR)
    path = report.study_dir / REPORT_FILE
    partial = path.with_suffix(".md.partial")
    partial.write_text(study_markdown(report, figure_list))
    partial.replace(path)
    log.info("Wrote the study's report to %s", path)
    return path

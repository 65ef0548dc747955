"""A sweep's report: every table and figure's numbers (:func:`compile_report`), the figures
(:func:`report_figures`) and report.md with PNG + CSV files (:func:`write_report`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from cxr_lightning.evaluation.bootstrap import N_BOOTSTRAP
from cxr_lightning.findings import FINDINGS
from cxr_lightning.report import figures, markdown, tables
from cxr_lightning.report.comparisons import setting_comparisons
from cxr_lightning.report.curves import reliability_points, roc_bands, roc_points
from cxr_lightning.report.load import REPLICATE_KEYS, distinguishing_keys, load_sweep

log = logging.getLogger(__name__)

ROC_FIGURE_NUMBERS = dict(zip(FINDINGS, (6, 7), strict=True))


@dataclass
class SweepReport:
    """The numbers of every table and figure of one sweep's report."""

    sweep_dir: Path
    varying: list[str]
    """The overrides (or config keys) that differ between the sweep's jobs."""
    jobs: pd.DataFrame
    """One row per job (detailed table)."""
    table3: pd.DataFrame
    discordant: pd.DataFrame
    """Table 3 on the discordant test subset (``test_discordant`` metrics)."""
    comparisons: pd.DataFrame
    """Pairwise comparison of the settings (DeLong, McNemar, Holm), subsets all and discordant."""
    stage_rows: pd.DataFrame
    """Table 1, one row per job x model x stage; empty when no job has per-stage records."""
    table1: pd.DataFrame
    """Table 1 summarised over each setting's runs."""
    jobs_without_stages: list[str]
    confusion: pd.DataFrame
    """Figure 4: confusion counts per setting and finding (runs pooled)."""
    confusion_per_job: pd.DataFrame
    accuracy: pd.DataFrame
    """Figure 5."""
    roc: dict[str, pd.DataFrame]
    """Figures 6-7, per finding."""
    roc_bands: dict[str, pd.DataFrame]
    """Figures 6-7's bootstrap bands, per finding."""
    reliability: pd.DataFrame
    """Reliability diagram: per job and finding, the probability bins."""
    training: pd.DataFrame
    """Figure 8."""
    checks: pd.DataFrame
    """Stored metrics that disagree with the predictions (empty when all agree)."""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReportFigure:
    """One figure of the report: its file name, caption, drawing and the numbers behind it."""

    name: str
    caption: str
    figure: Figure
    data: pd.DataFrame
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)
    """More numbers drawn in the figure, saved as ``{name}_{key}.csv``."""


def compile_report(sweep_dir: Path, n_bootstrap: int = N_BOOTSTRAP) -> SweepReport:
    """Read a sweep directory's results.json files and build every table and figure's numbers;
    ``n_bootstrap`` patient resamples for the ROC bands and the paired AUROC intervals."""
    jobs = load_sweep(sweep_dir)
    jobs_frame = tables.jobs_table(jobs)
    table3 = tables.formulation_table(jobs_frame)
    stage_rows, without_stages = tables.stage_rows(jobs)
    confusion_per_job = tables.confusion_counts(jobs)
    comparisons, notes = setting_comparisons(jobs, n_bootstrap)
    roc = {}
    for finding in FINDINGS:
        roc[finding], skipped = roc_points(jobs, finding)
        notes += skipped
    return SweepReport(
        sweep_dir=Path(sweep_dir),
        varying=distinguishing_keys(jobs),
        jobs=jobs_frame,
        table3=table3,
        discordant=tables.formulation_table(tables.jobs_table(jobs, tables.DISCORDANT_SUBSET),
                                            tables.DISCORDANT_SUBSET),
        comparisons=comparisons,
        stage_rows=stage_rows,
        table1=tables.stage_table(stage_rows) if len(stage_rows) else pd.DataFrame(),
        jobs_without_stages=without_stages,
        confusion=tables.pooled_confusion(confusion_per_job),
        confusion_per_job=confusion_per_job,
        accuracy=tables.accuracy_bars(table3),
        roc=roc,
        roc_bands={f: roc_bands(jobs, f, n_bootstrap) for f in FINDINGS},
        reliability=pd.concat([reliability_points(jobs, f) for f in FINDINGS],
                              ignore_index=True),
        training=tables.training_points(jobs_frame),
        checks=tables.consistency_checks(jobs),
        notes=notes,
    )


def report_figures(report: SweepReport,
                   published_accuracy: pd.DataFrame | None = None) -> list[ReportFigure]:
    """Figures 4 to 8 and the reliability diagram of a compiled report, drawn (matplotlib
    ``Figure`` objects); ``published_accuracy`` adds the study's accuracies to Figure 5."""
    drawn = [ReportFigure("figure4_confusion",
                          "Figure 4: confusion matrices at threshold 0.5 ([[TN, FP], [FN, TP]])",
                          figures.confusion_figure(report.confusion), report.confusion),
             ReportFigure("figure5_accuracy", "Figure 5: test accuracy per finding",
                          figures.accuracy_figure(report.accuracy, published_accuracy),
                          report.accuracy)]
    for finding, number in ROC_FIGURE_NUMBERS.items():
        if len(report.roc[finding]):
            bands = report.roc_bands[finding]
            drawn.append(ReportFigure(f"figure{number}_roc_{finding}",
                                      f"Figure {number}: ROC curves for {finding}",
                                      figures.roc_figure(report.roc[finding], finding, bands),
                                      report.roc[finding], {"band": bands}))
    drawn.append(ReportFigure("figure8_epochs_time",
                              "Figure 8: total epochs against time per epoch",
                              figures.epochs_time_figure(report.training), report.training))
    drawn.append(ReportFigure("reliability", "Reliability diagram (test split)",
                              figures.reliability_figure(report.reliability), report.reliability))
    return drawn


def table1_section(report: SweepReport) -> str:
    """Table 1's Markdown, or the reason it is unavailable for this sweep."""
    if report.stage_rows.empty:
        return ("Table 1 is unavailable for this sweep: no job's results.json has per-stage "
                "records (`members[].stages`).")
    parts = [markdown.stage_rows_markdown(report.stage_rows)]
    if (report.table1["runs"] > 1).any():
        parts += ["Mean ± sd over each setting's runs:", markdown.stage_summary_markdown(
            report.table1)]
    if report.jobs_without_stages:
        parts.append("Jobs without per-stage records (left out): "
                     + ", ".join(report.jobs_without_stages))
    return "\n\n".join(parts)


def discordant_section(report: SweepReport) -> str:
    """Table 3 on the discordant test images, or why it is unavailable for this sweep."""
    keys = list(tables.table3_keys(tables.DISCORDANT_SUBSET))
    if report.discordant[keys].isna().all().all():
        return (f"Unavailable for this sweep: no job's metrics hold "
                f"`{tables.DISCORDANT_SUBSET}/...` keys (results.json written before subsets "
                "were evaluated).")
    return markdown.table3_markdown(report.discordant, tables.DISCORDANT_SUBSET)


def comparison_section(report: SweepReport) -> str:
    """The paired comparison of the settings, or why there is none (the notes say)."""
    if report.comparisons.empty:
        return "No pair of settings was compared (see the consistency checks' notes)."
    return ("Pairs of settings on the same test images; subset `discordant`: exactly one "
            "finding present. Holm's correction across the pairs of each finding and subset."
            "\n\n" + markdown.comparison_markdown(report.comparisons))


def checks_section(report: SweepReport) -> str:
    """Whether every job's stored metrics match its predictions, and any recorded skips."""
    lines = []
    if report.checks.empty:
        lines.append(f"Every job's stored test metrics (accuracy, AUROC, confusion matrix, n) "
                     f"match those recomputed from its predictions ({len(report.jobs)} jobs).")
    else:
        lines += ["Stored metrics that disagree with the job's predictions "
                  "(the figures use the predictions):", report.checks.to_markdown(index=False)]
    lines += [f"- {note}" for note in report.notes]
    return "\n\n".join(lines)


def report_markdown(report: SweepReport, figure_list: list[ReportFigure]) -> str:
    """The whole report.md text; figures are linked by file name (same directory)."""
    replicate = [k for k in report.varying if k in REPLICATE_KEYS]
    sections = [
        f"# Report of sweep `{report.sweep_dir.name}`",
        f"{len(report.jobs)} jobs read from `{report.sweep_dir}`. Overrides that differ between "
        f"jobs: {', '.join(f'`{k}`' for k in report.varying) or 'none'}"
        + (f"; runs differing only in {', '.join(f'`{k}`' for k in replicate)} are averaged "
           "(mean ± sd)." if replicate else "."),
        "Cells show a single run's value with its 95% CI in brackets when results.json holds "
        "one (`{key}_ci_low` / `{key}_ci_high`), or mean ± sd over a setting's runs.",
        "## Table 1: metrics per unfreezing stage (experiment I)", table1_section(report),
        "## Table 3: test accuracy and AUROC per finding and formulation",
        markdown.table3_markdown(report.table3),
        "## Table 3 on the discordant test subset (exactly one finding present)",
        discordant_section(report),
        "## Formulation comparison (DeLong, McNemar, Holm)", comparison_section(report),
        "## Jobs (one row per job)", markdown.jobs_markdown(report.jobs),
    ]
    for item in figure_list:
        sections += [f"## {item.caption}",
                     f"![{item.caption}]({item.name}.png)\n\nNumbers: [{item.name}.csv]"
                     f"({item.name}.csv)"]
    sections += ["## Consistency checks", checks_section(report)]
    return "\n\n".join(sections) + "\n"


def write_report(report: SweepReport, out_dir: Path | None = None) -> Path:
    """Write a compiled report into ``out_dir`` (default ``SWEEP_DIR/report``): report.md,
    each figure as PNG + CSV, and the tables as CSV. Returns report.md's path."""
    out_dir = Path(out_dir) if out_dir is not None else report.sweep_dir / "report"
    figure_list = report_figures(report)
    write_report_files(report, figure_list, out_dir)
    path = out_dir / "report.md"
    path.write_text(report_markdown(report, figure_list))
    log.info("Wrote the report of %d jobs to %s", len(report.jobs), path)
    return path


def write_report_files(report: SweepReport, figure_list: list[ReportFigure],
                       out_dir: Path) -> None:
    """Each figure as PNG + CSV and the tables as CSV, into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in figure_list:
        figures.save_figure(item.figure, item.data, out_dir, item.name)
        for key, frame in item.extra.items():
            frame.to_csv(out_dir / f"{item.name}_{key}.csv", index=False)
    for name, frame in (("jobs", report.jobs), ("table3", report.table3),
                        ("table3_discordant", report.discordant),
                        ("comparisons", report.comparisons),
                        ("table1_stages", report.stage_rows), ("table1_summary", report.table1),
                        ("confusion_per_job", report.confusion_per_job),
                        ("consistency", report.checks)):
        frame.to_csv(out_dir / f"{name}.csv", index=False)

"""The report's figures, drawn with matplotlib (Agg canvas, no pyplot state) from the numbers
built in :mod:`cxr_lightning.report.tables` and :mod:`cxr_lightning.report.curves`.

Every figure is saved as PNG with the DataFrame it was drawn from beside it as CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cxr_lightning.findings import FINDINGS

DPI = 150


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _colours(settings: pd.Series) -> dict[str, tuple]:
    """One colour per setting, in first-seen order, the same in every figure of a report."""
    palette = colormaps["tab10"].colors
    return {s: palette[i % len(palette)] for i, s in enumerate(dict.fromkeys(settings))}


def save_figure(figure: Figure, data: pd.DataFrame, out_dir: Path, name: str) -> Path:
    """Write ``name.png`` and the numbers behind it as ``name.csv`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    figure.savefig(path, dpi=DPI)
    data.to_csv(out_dir / f"{name}.csv", index=False)
    return path


def confusion_figure(pooled: pd.DataFrame) -> Figure:
    """Figure 4: a confusion matrix at 0.5 per setting (rows) and finding (columns)."""
    settings = list(dict.fromkeys(pooled["setting"]))
    figure = _figure(3.2 * len(FINDINGS), 3.0 * len(settings))
    axes = np.atleast_2d(figure.subplots(len(settings), len(FINDINGS), squeeze=False))
    for row in pooled.itertuples():
        axis = axes[settings.index(row.setting), FINDINGS.index(row.finding)]
        counts = np.array([[row.tn, row.fp], [row.fn, row.tp]])
        axis.imshow(counts, cmap="Blues", vmin=0)
        for (i, j), count in np.ndenumerate(counts):
            axis.text(j, i, str(count), ha="center", va="center",
                      color="white" if count > counts.max() / 2 else "black")
        pooled_note = f" ({row.runs} runs pooled)" if row.runs > 1 else ""
        axis.set(title=f"{row.setting}: {row.finding}{pooled_note}", xticks=[0, 1],
                 yticks=[0, 1], xlabel="predicted", ylabel="true")
    return figure


def accuracy_figure(bars: pd.DataFrame, published: pd.DataFrame | None = None) -> Figure:
    """Figure 5, a scatter as the study draws it: test accuracy per finding, one point per
    setting with its CI or sd error bar; ``published`` (``setting``, ``finding``, ``accuracy``
    rows) adds the study's own figure beside each setting as a hollow star."""
    colours = _colours(bars["setting"])
    figure = _figure(2.0 + 1.2 * len(colours) * len(FINDINGS) / 2, 4.0)
    axis = figure.subplots()
    width = 0.8 / len(colours)
    for k, (setting, rows) in enumerate(bars.groupby("setting", sort=False)):
        rows = rows.set_index("finding").loc[list(FINDINGS)]
        x = np.arange(len(FINDINGS)) + (k - (len(colours) - 1) / 2) * width
        axis.scatter(x, rows["accuracy"], color=colours[setting], label=setting, zorder=3)
        # drawn as lines, not yerr: a percentile CI need not contain the point estimate
        axis.vlines(x, rows["low"], rows["high"], color=colours[setting], linewidth=1)
        theirs = (published[published["setting"] == setting].set_index("finding")
                  .reindex(list(FINDINGS))["accuracy"] if published is not None else None)
        if theirs is not None and theirs.notna().any():
            axis.scatter(x + width / 3, theirs, marker="*", s=90, facecolors="none",
                         edgecolors=colours[setting], zorder=3,
                         label=f"{setting}: the study's (published)")
    intervals = sorted(set(bars["interval"]) - {""})
    axis.set(xticks=np.arange(len(FINDINGS)), xticklabels=FINDINGS, ylim=(0, 1),
             ylabel="test accuracy at 0.5",
             title="Accuracy" + (f" (error bars: {', '.join(intervals)})" if intervals else ""))
    axis.legend(fontsize="small")
    return figure


def roc_figure(points: pd.DataFrame, finding: str, bands: pd.DataFrame | None = None) -> Figure:
    """Figures 6-7: one finding's ROC curves, every run of every setting overlaid; the legend
    gives each setting's AUROC (mean ± sd over its runs). ``bands`` (``roc_bands``) shades each
    run's 95% patient-bootstrap band."""
    colours = _colours(points["setting"])
    figure = _figure(5.0, 5.0)
    axis = figure.subplots()
    for setting, runs in points.groupby("setting", sort=False):
        aucs = runs.groupby("job", sort=False)["auc"].first()
        label = (f"{setting} (AUC {aucs.iloc[0]:.3f})" if len(aucs) == 1 else
                 f"{setting} (AUC {aucs.mean():.3f} ± {aucs.std(ddof=1):.3f}, {len(aucs)} runs)")
        for k, (_, curve) in enumerate(runs.groupby("job", sort=False)):
            axis.plot(curve["fpr"], curve["tpr"], color=colours[setting],
                      alpha=1.0 if len(aucs) == 1 else 0.6, label=label if k == 0 else None)
    if bands is not None and len(bands):
        for (setting, _), band in bands.groupby(["setting", "job"], sort=False):
            axis.fill_between(band["fpr"], band["tpr_low"], band["tpr_high"],
                              color=colours[setting], alpha=0.12, linewidth=0)
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    band_note = ", 95% bootstrap bands" if bands is not None and len(bands) else ""
    axis.set(title=f"ROC, test split: {finding}{band_note}",
             xlabel="false positive rate (1 - specificity)",
             ylabel="true positive rate (sensitivity)", xlim=(0, 1), ylim=(0, 1.02),
             aspect="equal")
    axis.legend(loc="lower right", fontsize="small")
    return figure


def reliability_figure(points: pd.DataFrame) -> Figure:
    """Reliability diagram: observed fraction of positives against mean predicted probability
    per bin, one panel per finding, one line per run."""
    colours = _colours(points["setting"])
    figure = _figure(4.5 * len(FINDINGS), 4.5)
    axes = figure.subplots(1, len(FINDINGS), squeeze=False)[0]
    for axis, finding in zip(axes, FINDINGS, strict=True):
        labelled = set()
        for (setting, _), curve in points[points["finding"] == finding].groupby(
                ["setting", "job"], sort=False):
            axis.plot(curve["mean_predicted"], curve["observed_fraction"], marker="o",
                      markersize=3, color=colours[setting],
                      label=None if setting in labelled else setting)
            labelled.add(setting)
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
        axis.set(title=f"Calibration, test split: {finding}", xlim=(0, 1), ylim=(0, 1),
                 xlabel="mean predicted probability (bin)", ylabel="observed fraction positive",
                 aspect="equal")
        axis.legend(loc="upper left", fontsize="small")
    return figure


def epochs_time_figure(points: pd.DataFrame) -> Figure:
    """Figure 8: total epochs (all of a job's models) against mean time per epoch, one point per
    job (the job names are in the CSV)."""
    colours = _colours(points["setting"])
    figure = _figure(6.0, 4.0)
    axis = figure.subplots()
    for setting, jobs in points.groupby("setting", sort=False):
        axis.scatter(jobs["epoch_time_s"], jobs["epochs"], color=colours[setting], label=setting,
                     alpha=0.8)
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(xlabel="time per epoch (s)", ylabel="total epochs", title="Epochs and epoch time")
    axis.legend(fontsize="small")
    return figure

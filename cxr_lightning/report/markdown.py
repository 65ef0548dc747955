"""Markdown rendering of the report's tables (numbers formatted, nothing recomputed)."""

from __future__ import annotations

import math

import pandas as pd

from cxr_lightning.findings import FINDINGS
from cxr_lightning.report.tables import CI_SUFFIXES, table3_keys

DIGITS = 3
METRIC_NAMES = {"acc": "accuracy", "auroc": "AUROC"}


def metric_header(key: str) -> str:
    """``test/acc/edema`` -> ``test edema accuracy``; ``val/auroc/mean`` -> ``val mean AUROC``."""
    subset, metric, finding = key.split("/")
    return f"{subset} {finding} {METRIC_NAMES.get(metric, metric)}"


def estimate(row: pd.Series, key: str) -> str:
    """A value as text: ``mean ± sd`` over several runs, ``value [CI low, CI high]`` for one run
    whose metrics hold a 95% CI, else the value; ``–`` where the key is absent."""
    value = row.get(key, math.nan)
    if pd.isna(value):
        return "–"
    if row.get("runs", 1) > 1:
        return f"{value:.{DIGITS}f} ± {row[f'{key}_sd']:.{DIGITS}f}"
    low, high = (row.get(key + s, math.nan) for s in CI_SUFFIXES)
    if pd.notna(low) and pd.notna(high):
        return f"{value:.{DIGITS}f} [{low:.{DIGITS}f}, {high:.{DIGITS}f}]"
    return f"{value:.{DIGITS}f}"


def estimates_markdown(frame: pd.DataFrame, labels: list[str], keys: list[str]) -> str:
    """A Markdown table: the ``labels`` columns as they are, each of ``keys`` as an estimate."""
    table = frame[labels].copy()
    for key in keys:
        table[metric_header(key)] = [estimate(row, key) for _, row in frame.iterrows()]
    return table.to_markdown(index=False, disable_numparse=True)  # keep "0.500" as written


def table3_markdown(table3: pd.DataFrame, stage: str = "test") -> str:
    """Table 3 (of ``stage``): accuracy then AUROC per finding, one row per setting."""
    return estimates_markdown(table3, ["setting", "runs"], list(table3_keys(stage)))


def jobs_markdown(jobs_frame: pd.DataFrame) -> str:
    """One row per job: its overrides, Table 3 metrics and training statistics."""
    overrides = [c for c in jobs_frame.columns if c not in ("job", "formulation", "setting")
                 and "/" not in c]
    table = jobs_frame.assign(runs=1)
    text = estimates_markdown(table, ["job", "setting", *overrides], list(table3_keys()))
    training = jobs_frame[["job", "train/epochs", "train/epoch_time_s", "train/total_time_s"]]
    training = training.rename(columns={"train/epochs": "epochs",
                                        "train/epoch_time_s": "time per epoch (s)",
                                        "train/total_time_s": "total time (s)"})
    return text + "\n\n" + training.to_markdown(index=False, floatfmt=".2f")


def stage_metric_keys(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a Table 1 frame: validation then test, AUROC first, findings
    in FINDINGS order after the ``mean``."""
    keys = [c for c in frame.columns if c.count("/") == 2 and not c.endswith(("_sd", *CI_SUFFIXES))]
    order = {name: i for i, name in enumerate(("mean", *FINDINGS))}

    def position(key: str) -> tuple:
        subset, metric, finding = key.split("/")
        return subset != "val", metric != "auroc", metric, order.get(finding, len(order))

    return sorted(keys, key=position)


def stage_rows_markdown(rows: pd.DataFrame) -> str:
    """Table 1, one row per job, model and unfreezing stage."""
    labels = ["job", "setting", "member", "stage", "start_epoch", "blocks", "epochs",
              "best_epoch"]
    return estimates_markdown(rows.assign(runs=1), labels, stage_metric_keys(rows))


def stage_summary_markdown(summary: pd.DataFrame) -> str:
    """Table 1 averaged over each setting's runs (mean ± sd)."""
    labels = ["setting", "member", "stage", "blocks", "runs"]
    table = summary.copy()
    for column in ("start_epoch", "epochs", "best_epoch"):
        table[column] = [estimate(row, column) for _, row in summary.iterrows()]
    return estimates_markdown(table, [*labels, "start_epoch", "epochs", "best_epoch"],
                              stage_metric_keys(summary))


def _number(value: float, spec: str) -> str:
    return "–" if pd.isna(value) else format(value, spec)


def _interval(low: float, high: float) -> str:
    return "–" if pd.isna(low) else f"[{low:+.{DIGITS}f}, {high:+.{DIGITS}f}]"


def comparison_markdown(comparisons: pd.DataFrame) -> str:
    """The paired comparison of settings: ΔAUROC (A - B) with its DeLong and patient-bootstrap
    95% CIs, DeLong p and its Holm adjustment, Δ accuracy with McNemar's exact p and Holm."""
    replicate = list(comparisons.columns[:list(comparisons.columns).index("finding")])
    table = comparisons[[*replicate, "finding", "subset", "run_a", "run_b", "n"]].rename(
        columns={"run_a": "A", "run_b": "B"})
    rows = comparisons.itertuples()
    cells = [(_number(r.auroc_delta, f"+.{DIGITS}f"),
              _interval(r.auroc_delta_ci_low, r.auroc_delta_ci_high),
              _interval(r.auroc_delta_boot_ci_low, r.auroc_delta_boot_ci_high),
              _number(r.delong_p, ".3g"), _number(r.delong_p_holm, ".3g"),
              _number(r.acc_delta, f"+.{DIGITS}f"), _number(r.mcnemar_p, ".3g"),
              _number(r.mcnemar_p_holm, ".3g")) for r in rows]
    headers = ("ΔAUROC (A - B)", "95% CI (DeLong)", "95% CI (bootstrap)", "DeLong p",
               "DeLong p (Holm)", "Δ accuracy", "McNemar p", "McNemar p (Holm)")
    for k, header in enumerate(headers):
        table[header] = [c[k] for c in cells]
    return table.to_markdown(index=False, disable_numparse=True)

"""The study report's own tables, set beside the study's published figures
(:mod:`cxr_lightning.published`): Table 2, the baseline's stopping epoch, Table 3 with the
study's rows, and the departures of a run's configuration from the study."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from cxr_lightning import published
from cxr_lightning.data.manifest import SPLITS, cohort_table
from cxr_lightning.report.tables import table3_keys

STUDY_ROW_SUFFIX = " (study, published)"
PAPER = {"data.source": "mimic_cxr", "model.backbone": "resnet152", "model.weights": "imagenet",
         "data.image_size": 512, "data.labeler": "chexpert", "data.augment": False}
"""What the study ran, where our configuration can differ (key -> the study's value)."""
TABLE1_SCHEDULE = [[35, ["layer4.2"]], [50, ["layer4.1", "layer4.0"]],
                   [70, ["layer3.35", "layer3.34", "layer3.33"]]]
"""conf/unfreeze/table1.yaml: the study's Table 1 schedule as ResNet152 block names."""


def table2(manifest: pd.DataFrame) -> pd.DataFrame:
    """Table 2: our images per (edema, effusion) combination and split beside the study's
    counts; ``share`` and ``study_share`` are each cohort's fractions (comparable across sizes)."""
    ours = cohort_table(manifest).reindex(columns=list(SPLITS), fill_value=0)
    ours["total"] = ours.sum(axis=1)
    study = pd.Series({f"{e},{f}": n for (e, f), n in published.TABLE2_IMAGES.items()})
    table = ours.join(study.rename("study"), how="outer").fillna(0).astype(int)
    table["share"] = (table["total"] / table["total"].sum()).round(3)
    table["study_share"] = (table["study"] / table["study"].sum()).round(3)
    table.loc["total"] = table.sum(numeric_only=True)
    table.loc["total", ["share", "study_share"]] = 1.0
    table.index.name = "(edema,effusion)"
    return table.reset_index()


def stopping_epochs(members: list[dict[str, Any]]) -> pd.DataFrame:
    """The baseline run's models (one results.json's ``members``): epochs trained before early
    stopping ended the run, and the best epoch (the best checkpoint's, counted from 0)."""
    rows = []
    for member in members:
        stages = member.get("stages") or [{}]
        best = stages[-1].get("best_epoch")
        rows.append({"model": member["name"], "epochs": member.get("epochs"),
                     "best_epoch": best,
                     "study_epochs": published.BASELINE_EPOCHS})
    return pd.DataFrame(rows)


def table3_with_published(table3: pd.DataFrame) -> pd.DataFrame:
    """Table 3 (one row per setting) followed by the study's published row of each formulation
    present (one figure each, ``runs`` 1); a figure the study does not publish is NaN."""
    keys = list(table3_keys())
    rows = [{"setting": f"{formulation}{STUDY_ROW_SUFFIX}", "formulation": formulation,
             "runs": 1, **{k: published.TABLE3[formulation].get(k, math.nan) for k in keys}}
            for formulation in dict.fromkeys(table3["formulation"]) if formulation in
            published.TABLE3]
    return pd.concat([table3, pd.DataFrame(rows)], ignore_index=True)


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    return pd.json_normalize(config, sep=".").iloc[0].to_dict() if config else {}


def departures(configs: dict[str, dict[str, Any]], seeds: int) -> list[str]:
    """How this run differs from the study, one sentence each, from the resolved config of each
    part's first job (``part -> config``) and the number of seeds: values the study states that
    ours changes, then the values we chose where the study is silent."""
    notes = []
    any_config = _flat(configs.get("formulations") or next(iter(configs.values()), {}))
    for key, theirs in PAPER.items():
        ours = any_config.get(key)
        if ours is not None and ours != theirs:
            notes.append(f"`{key}` is `{ours}`; the study's is `{theirs}`.")
    if any_config.get("data.source") == "sample":
        notes.append("The data are the embedded MIMIC-CXR-format sample (synthetic findings), "
                     "not MIMIC-CXR: the numbers show the pipeline works, not the study's result.")
    if any_config:
        notes.append(
            "Ours where the study is silent: optimizer `"
            f"{str(any_config.get('model.optimizer._target_', '')).rsplit('.', 1)[-1]}`, "
            f"learning rate {any_config.get('model.lr')}, batch {any_config.get('data.batch_size')}"
            f", weight decay {any_config.get('model.weight_decay')}; resizing to the square by "
            f"`{any_config.get('data.resize')}`; a patient-level `{any_config.get('data.split')}` "
            f"split (seed {any_config.get('data.split_seed')}); early stopping patience "
            f"{any_config.get('unfreeze.patience')} per setting with `restore_best="
            f"{any_config.get('unfreeze.restore_best')}`.")
    table1 = _flat(configs.get("table1", {}))
    if table1 and (table1.get("unfreeze.schedule") != TABLE1_SCHEDULE
                   or table1.get("trainer.max_epochs") != published.TABLE1_TOTAL_EPOCHS):
        notes.append(f"Table 1's schedule ran as `{table1.get('unfreeze.schedule')}` over "
                     f"{table1.get('trainer.max_epochs')} epochs; the study's starts its stages at "
                     f"epochs 35, 50 and 70 of {published.TABLE1_TOTAL_EPOCHS}.")
    baseline = _flat(configs.get("baseline", {}))
    if baseline:
        notes.append(
            "The baseline trains the binary formulation's effusion model too (a plan covers both "
            "findings); the study's baseline is its edema model. It stops after "
            f"{baseline.get('callbacks.early_stopping.patience')} epochs without improvement "
            f"(ours; the study does not say), at most {baseline.get('trainer.max_epochs')}.")
    if seeds != 1:
        notes.append(f"Experiment II ran {seeds} seeds per formulation; Table 3 shows their mean "
                     "± sd.")
    return notes

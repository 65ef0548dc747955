"""Sweeps for the report tests: hand-built results.json files and one tiny real sweep.

Hand-built fixture (``write_job``): a results.json with the schema of cxr_lightning/results.py,
its metrics computed here with scikit-learn (an independent reference), ``members[].stages``
records in the schema agreed for Table 1 (``stage``, ``start_epoch``, ``blocks`` unfrozen at that
stage, ``epochs``, ``best_epoch``, ``metrics``: ``val/auroc/mean``, ``val/auroc/{f}``,
``test/auroc/{f}``, ``test/acc/{f}`` for the model's findings) and, when asked, 95% CI keys
``{key}_ci_low`` / ``{key}_ci_high``; plus the job's ``.hydra/overrides.yaml`` as Hydra writes it.

Real sweep (``tiny_sweep``): a CI-sized experiment II multirun through the real CLI, run once per
test session and shared by the report and notebook test modules through pytest's base temporary
directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from cxr_lightning.findings import FINDINGS
from tests.helpers.samples import cli_data_dir

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def random_predictions(seed: int, n: int = 40, masked: int = 3) -> pd.DataFrame:
    """One run's predictions on a test split: the images, patients and labels are the same for
    every ``seed`` (``masked`` NaN labels per finding), the probabilities are the seed's,
    loosely correlated with the labels and rounded to 2 decimals so that ties occur."""
    split, run = np.random.default_rng(0), np.random.default_rng(seed)
    table = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)],
                          "subject_id": split.integers(1, 20, n), "study_id": np.arange(n),
                          "view": "PA"})
    for finding in FINDINGS:
        labels = split.integers(0, 2, n).astype(float)
        probability = np.clip(0.3 * labels + run.uniform(0, 0.7, n), 0, 1).round(2)
        labels[split.choice(n, masked, replace=False)] = np.nan
        table[finding], table[f"{finding}_prob"] = labels, probability
    return table


def discordant(predictions: pd.DataFrame) -> pd.DataFrame:
    """The images with both labels known and exactly one finding present."""
    labels = predictions[list(FINDINGS)]
    return predictions[labels.notna().all(axis=1) & (labels.sum(axis=1) == 1)]


def reference_metrics(predictions: pd.DataFrame, stage: str = "test") -> dict:
    """Metrics of a predictions table with scikit-learn, in results.json's key scheme."""
    metrics: dict = {}
    for finding in FINDINGS:
        known = predictions.dropna(subset=[finding])
        y, p = known[finding].astype(int), known[f"{finding}_prob"]
        metrics[f"{stage}/n/{finding}"] = len(known)
        metrics[f"{stage}/acc/{finding}"] = accuracy_score(y, p > 0.5)
        metrics[f"{stage}/auroc/{finding}"] = roc_auc_score(y, p)
        metrics[f"{stage}/confusion/{finding}"] = confusion_matrix(y, p > 0.5,
                                                                   labels=[0, 1]).tolist()
    metrics[f"{stage}/auroc/mean"] = float(np.mean([metrics[f"{stage}/auroc/{f}"]
                                                    for f in FINDINGS]))
    return metrics


def stage_records(findings: tuple[str, ...], offset: float) -> list[dict]:
    """Two unfreezing stages of one model (head only, then layer4.2) with made-up metrics."""
    records = []
    for stage, (start, blocks, epochs) in enumerate(((0, [], 3), (3, ["layer4.2"], 2))):
        values = {f: 0.6 + 0.1 * stage + offset + 0.01 * i for i, f in enumerate(findings)}
        records.append({
            "stage": stage, "start_epoch": start, "blocks": blocks, "epochs": epochs,
            "best_epoch": start + epochs - 1,
            "metrics": {"val/auroc/mean": float(np.mean(list(values.values()))),
                        **{f"val/auroc/{f}": v for f, v in values.items()},
                        **{f"test/auroc/{f}": v - 0.05 for f, v in values.items()},
                        **{f"test/acc/{f}": v - 0.1 for f, v in values.items()}}})
    return records


def write_job(sweep_dir: Path, num: int, formulation: str, predictions: pd.DataFrame, *,
              overrides: dict[str, str] | None = None,
              epoch_times_s: tuple[float, ...] = (1.0, 2.0), stages: bool = False,
              ci: dict[str, tuple[float, float]] | None = None, hydra_dir: bool = True,
              subsets: bool = False) -> Path:
    """Write ``sweep_dir/<num>_<formulation>/results.json`` (and ``.hydra/overrides.yaml``);
    ``subsets``: also the ``test_discordant/...`` metrics."""
    job_dir = sweep_dir / f"{num}_{formulation}"
    job_dir.mkdir(parents=True)
    overrides = {"formulation": formulation, **(overrides or {})}
    member_findings = [(f,) for f in FINDINGS] if formulation == "binary" else [FINDINGS]
    members = []
    for k, findings in enumerate(member_findings):
        name = "-".join([formulation, *findings]) if formulation == "binary" else formulation
        member = {"name": name, "findings": list(findings), "epochs": len(epoch_times_s),
                  "epoch_times_s": list(epoch_times_s), "unfreeze_history": [],
                  "best_val_auroc_mean": 0.7, "best_checkpoint": "best.ckpt"}
        if stages:
            member["stages"] = stage_records(findings, offset=0.01 * num + 0.001 * k)
        members.append(member)
    times = [t for m in members for t in m["epoch_times_s"]]
    metrics = {**reference_metrics(predictions), "train/epochs": sum(m["epochs"] for m in members),
               "train/total_time_s": sum(times), "train/epoch_time_s": float(np.mean(times))}
    if subsets:
        metrics.update(reference_metrics(discordant(predictions), "test_discordant"))
    for key, (low, high) in (ci or {}).items():
        metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"] = low, high
    config = {"formulation": {"name": formulation}, "seed": int(overrides.get("seed", 42)),
              "unfreeze": {"interval": int(overrides.get("unfreeze.interval", 10))},
              "logger": {"wandb": {"name": f"{formulation}-{num}"}}}
    results = {"formulation": formulation, "metrics": metrics, "members": members,
               "cohort": {}, "config": config,
               "predictions": json.loads(predictions.to_json(orient="records")),
               "val_predictions": []}
    (job_dir / "results.json").write_text(json.dumps(results))
    if hydra_dir:
        (job_dir / ".hydra").mkdir()
        lines = [f"- {k}={v}" for k, v in overrides.items()] + ["- paths.root_dir=/tmp/x"]
        (job_dir / ".hydra" / "overrides.yaml").write_text("\n".join(lines) + "\n")
    return job_dir


def tiny_sweep(base_temp: Path) -> Path:
    """A CI-sized experiment II sweep (the three formulations, one seed) on a tiny generated
    sample through the real CLI (~40-60 s), run once per pytest session: later callers get the
    sweep directory the first one made."""
    home = base_temp / "report_tiny_sweep"
    done_marker = home / "sweep_dir.txt"
    if done_marker.is_file():
        return Path(done_marker.read_text())
    home.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "cxr_lightning.train", "-m",
               "experiment=exp2_formulations", "hydra.sweeper.params.seed=1",
               f"paths.root_dir={home}", f"paths.data_dir={cli_data_dir(base_temp)}",
               "data.sample.n_subjects=40", "data.image_size=32", "trainer.max_epochs=2",
               "unfreeze.max_blocks=1",
               "callbacks.model_checkpoint.save_last=false"]  # no resume here: spare the disk
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    run = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    (sweep,) = {p.parent for p in (home / "outputs" / "multiruns").glob("**/multirun.yaml")}
    done_marker.write_text(str(sweep))
    return sweep

"""results.json: the evaluation's keys, the thresholds chosen on validation, valid JSON."""

import json
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from cxr_lightning.data.manifest import CohortReport
from cxr_lightning.findings import FINDINGS
from cxr_lightning.job_record import JobRecord
from cxr_lightning.results import MemberResult, job_results, predictions_table
from tests.helpers.eval_tables import prediction_table

KEY = re.compile(r"^(test|test_discordant|test_concordant|test_view_[A-Za-z0-9_]+|val)"
                 r"/[a-z0-9_]+/(edema|effusion|mean|all)(_ci_low|_ci_high)?$")


@pytest.fixture(scope="module")
def results():
    split = {name: prediction_table(n, n // 3, seed=seed)
             for name, n, seed in (("test", 256, 71), ("val", 200, 72))}
    member = MemberResult(
        name="multilabel", findings=FINDINGS, epochs=2, epoch_times_s=[3.0, 5.0],
        unfreeze_history=[], best_val_auroc_mean=0.7, best_checkpoint="best.ckpt",
        precision="32-true", device="cpu", throughput=[],
        probabilities={s: [torch.tensor(t[[f"{f}_prob" for f in FINDINGS]].to_numpy())]
                       for s, t in split.items()})
    manifests = {s: t.drop(columns=[f"{f}_prob" for f in FINDINGS]) for s, t in split.items()}
    tables = {s: predictions_table(manifests[s], [member], s) for s in split}
    cfg = OmegaConf.create({"seed": 5, "evaluation": {"n_bootstrap": 400,
                                                      "target_sensitivity": 0.9}})
    return job_results(cfg, "multilabel", [member], tables["test"], tables["val"],
                       CohortReport()), split


def test_legacy_keys_keep_their_meaning(results):
    content, split = results
    metrics, test = content["metrics"], split["test"]
    for finding in FINDINGS:
        known = test.dropna(subset=[finding])
        y, p = known[finding], known[f"{finding}_prob"]
        assert metrics[f"test/n/{finding}"] == len(known)
        assert metrics[f"test/acc/{finding}"] == pytest.approx(accuracy_score(y, p > 0.5))
        assert metrics[f"test/auroc/{finding}"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
        assert metrics[f"test/confusion/{finding}"] == confusion_matrix(y, p > 0.5).tolist()
    assert metrics["test/auroc/mean"] == pytest.approx(
        np.mean([metrics[f"test/auroc/{f}"] for f in FINDINGS]))
    assert metrics["train/epochs"] == 2 and metrics["train/total_time_s"] == 8.0
    assert metrics["train/epoch_time_s"] == 4.0


def test_every_metric_follows_the_key_scheme_and_json_is_strict(results, tmp_path):
    content, _ = results
    for key in content["metrics"]:
        assert key.startswith("train/") or KEY.match(key), key
    for subset in ("test", "test_discordant", "test_concordant", "test_view_AP", "test_view_PA"):
        assert f"{subset}/auroc/effusion_ci_low" in content["metrics"]
        assert f"{subset}/joint_acc/all_ci_high" in content["metrics"]
    assert "val/auroc/edema" in content["metrics"]
    assert not any(k.startswith("val/") and k.endswith("_ci_low") for k in content["metrics"])
    json.dumps(content, allow_nan=False)  # undefined metrics are null, never NaN
    content["overrides"] = []
    assert (tmp_path / "results.json") == JobRecord(tmp_path).write_results(content)
    assert JobRecord(tmp_path).read_results() == json.loads(json.dumps(content))


def test_thresholds_are_stored_as_chosen_on_validation(results):
    content, _ = results
    assert content["evaluation"]["n_bootstrap"] == 400 and content["evaluation"]["seed"] == 5
    for finding in FINDINGS:
        chosen = content["thresholds"][finding]
        assert set(chosen) == {"0.5", "youden", "sens90"} and chosen["0.5"] == 0.5
        for name in ("youden", "sens90"):
            assert chosen[name] == content["metrics"][f"val/threshold_{name}/{finding}"]
            assert 0.0 <= chosen[name] <= 1.0

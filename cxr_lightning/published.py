"""The study's published figures, in one place, each with where it comes from.

Everything here is quoted from the study (its tables, text and figures), never computed; the
report sets our results beside these, and the sample generator draws its label mix from Table 2.
The study states no optimizer, learning rate, batch size or weight decay, so none is quoted here.
"""

from __future__ import annotations

TABLE2_IMAGES: dict[tuple[int, int], int] = {(0, 0): 11548, (0, 1): 5709, (1, 0): 2310,
                                             (1, 1): 14136}
"""The study's Table 2: images of its cohort per known (edema, effusion) combination (CheXpert
labels, 0/1 for both findings); 33,703 in all."""
TABLE2_SOURCE = "the study's Table 2 (cohort per (edema, effusion) combination)"

TABLE3: dict[str, dict[str, float]] = {
    "binary": {"test/acc/edema": 0.797, "test/acc/effusion": 0.818},
    "multilabel": {"test/acc/edema": 0.783, "test/acc/effusion": 0.802},
    "multiclass": {"test/acc/edema": 0.795, "test/acc/effusion": 0.826,
                   "test/auroc/edema": 0.88, "test/auroc/effusion": 0.90},
}
"""The study's test figures per formulation: accuracy per finding (Table 3) and, for the
multiclass formulation only, AUROC per finding (its ROC curves, Figures 6-7); the study
publishes no AUROC for the binary and multilabel formulations."""
TABLE3_SOURCE = ("the study's Table 3 (test accuracy per finding and formulation) and its "
                 "Figures 6-7 (multiclass AUROC)")

TEST_IMAGES = 3371
"""The study's test set: 10% of its cohort (its text)."""

TABLE1_EPOCHS: tuple[tuple[int, str], ...] = (
    (0, "head only"), (35, "+ conv5 block 3"), (50, "all of conv5"),
    (70, "+ the last 3 conv4 blocks"))
"""The study's Table 1 schedule for ResNet152 (start epoch, what trains), 80 epochs in all.
Its numbers came from an earlier regression task (a BNPP serum biomarker, on other data, scored
by MAE): only the schedule carries over to MIMIC-CXR, so no Table 1 figure is quoted."""
TABLE1_TOTAL_EPOCHS = 80

BASELINE_EPOCHS = 10
"""Epochs per unfreezing setting, which the study set from one run: a binary edema classifier
on MIMIC-CXR with every backbone layer frozen, trained until early stopping."""

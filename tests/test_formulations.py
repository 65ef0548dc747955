"""Formulations: the study's class encoding, class weights, marginals and losses by hand."""

import math

import pytest
import torch

from cxr_lightning.findings import (
    class_to_combination,
    combination_to_class,
    marginal_probabilities,
)
from cxr_lightning.models.formulations import (
    BinaryFormulation,
    FormulationPlan,
    MulticlassFormulation,
    MultilabelFormulation,
    binary_plan,
    inverse_frequency_weights,
    multiclass_plan,
    multilabel_plan,
)

NAN = float("nan")


def test_class_encoding_is_the_studys():
    labels = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    assert combination_to_class(labels).tolist() == [0, 1, 2, 3]
    assert class_to_combination(torch.tensor([0, 1, 2, 3])).tolist() == labels.tolist()


def test_marginals_sum_the_compatible_classes():
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.15, 0.05]])
    expected = torch.tensor([[0.3 + 0.4, 0.2 + 0.4], [0.15 + 0.05, 0.1 + 0.05]])
    torch.testing.assert_close(marginal_probabilities(p), expected)


def test_class_weights_are_n_over_4_nc_from_known_rows():
    # counts: (0,0) x1, (0,1) x2, (1,0) x3, (1,1) x4 = 10 rows; one masked row is ignored
    rows = [[0, 0]] + [[0, 1]] * 2 + [[1, 0]] * 3 + [[1, 1]] * 4 + [[NAN, 1]]
    weights = inverse_frequency_weights(torch.tensor(rows, dtype=torch.float32))
    torch.testing.assert_close(weights, torch.tensor([10 / 4, 10 / 8, 10 / 12, 10 / 16]))


def test_class_weights_reject_a_missing_combination():
    with pytest.raises(ValueError, match=r"\(1, 0\)"):
        inverse_frequency_weights(torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))


def test_weighted_cross_entropy_matches_hand_computation():
    formulation = MulticlassFormulation()
    formulation.fit_to_training_labels(torch.tensor([[0.0, 0.0]] * 2 + [[0.0, 1.0], [1.0, 0.0],
                                                      [1.0, 1.0]] * 1 + [[1.0, 1.0]] * 3))
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    labels = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # classes 1 and 3
    # weights: N=8, counts (2,1,1,4) -> 8/(4*2)=1, 8/4=2, 2, 8/16=0.5
    w = [1.0, 2.0, 2.0, 0.5]
    nll = []
    for row, cls in ((logits[0], 1), (logits[1], 3)):
        log_z = math.log(sum(math.exp(v) for v in row.tolist()))
        nll.append(-(row[cls].item() - log_z))
    expected = (w[1] * nll[0] + w[3] * nll[1]) / (w[1] + w[3])
    assert formulation.loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_multiclass_loss_skips_rows_with_a_masked_finding():
    formulation = MulticlassFormulation()
    logits = torch.tensor([[1.0, 0.0, 0.0, 0.0], [5.0, -5.0, 3.0, 0.0]])
    labels = torch.tensor([[0.0, 0.0], [NAN, 1.0]])
    only_first = formulation.loss(logits[:1], labels[:1])
    assert formulation.loss(logits, labels).item() == pytest.approx(only_first.item())


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_multilabel_bce_matches_hand_computation_and_masks_nan():
    formulation = MultilabelFormulation()
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.7]])
    labels = torch.tensor([[1.0, 0.0], [NAN, 1.0]])
    expected = (_bce(0.3, 1) + _bce(-1.2, 0) + _bce(0.7, 1)) / 3
    assert formulation.loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(formulation.finding_probabilities(logits), torch.sigmoid(logits))


def test_binary_uses_only_its_own_finding():
    formulation = BinaryFormulation("effusion")
    logits = torch.tensor([[0.4], [-0.9]])
    labels = torch.tensor([[NAN, 1.0], [1.0, 0.0]])  # edema column must be ignored
    expected = (_bce(0.4, 1) + _bce(-0.9, 0)) / 2
    assert formulation.loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert formulation.finding_columns == [1]


def test_plans_cover_each_finding_once():
    assert [m.findings for m in binary_plan().members] == [("edema",), ("effusion",)]
    assert [m.num_outputs for m in multilabel_plan().members] == [2]
    assert [m.num_outputs for m in multiclass_plan().members] == [4]
    assert binary_plan().member_name(binary_plan().members[1]) == "binary-effusion"
    with pytest.raises(ValueError, match="exactly once"):
        FormulationPlan("broken", [BinaryFormulation("edema")])

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
    compatible_classes,
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


def _softmax(row):
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def test_compatible_classes_treat_nan_as_either_value():
    labels = torch.tensor([[0.0, 1.0], [1.0, NAN], [NAN, 0.0], [NAN, NAN]])
    assert compatible_classes(labels).tolist() == [
        [False, True, False, False],  # (0,1)
        [False, False, True, True],  # (1,0), (1,1)
        [True, False, True, False],  # (0,0), (1,0)
        [True, True, True, True],
    ]


@pytest.mark.parametrize("weighted", [False, True])
def test_multiclass_loss_is_the_marginal_likelihood_of_compatible_classes(weighted):
    formulation = MulticlassFormulation()
    if weighted:  # counts (2,1,1,4) -> weights (1, 2, 2, 0.5), as above
        formulation.fit_to_training_labels(torch.tensor(
            [[0.0, 0.0]] * 2 + [[0.0, 1.0], [1.0, 0.0]] + [[1.0, 1.0]] * 4))
    w = [1.0, 2.0, 2.0, 0.5] if weighted else [1.0] * 4
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4],
                           [-0.5, 1.5, 0.2, 0.1], [3.0, -2.0, 1.0, 0.0]])
    labels = torch.tensor([[0.0, 1.0], [1.0, NAN], [NAN, 0.0], [NAN, NAN]])
    p = [_softmax(row) for row in logits.tolist()]
    nll = [-math.log(p[0][1]), -math.log(p[1][2] + p[1][3]), -math.log(p[2][0] + p[2][2])]
    row_w = [w[1], (w[2] + w[3]) / 2, (w[0] + w[2]) / 2]  # mean of the compatible classes'
    expected = sum(wi * li for wi, li in zip(row_w, nll, strict=True)) / sum(row_w)
    assert formulation.loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # the row with both findings masked contributes nothing, not even to the normaliser
    assert formulation.loss(logits[:3], labels[:3]).item() == pytest.approx(expected, rel=1e-6)


def test_multiclass_loss_of_fully_masked_rows_is_zero_with_a_gradient():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = MulticlassFormulation().loss(logits, torch.full((3, 2), NAN))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(3, 4))


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

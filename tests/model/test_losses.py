"""The losses against hand-computed values and independent formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from grace_fast.model import (
    GraceConfig,
    GraceLoss,
    class_counts,
    focal_loss,
    info_nce,
    inverse_frequency_weights,
)
from grace_fast.model.model import GraceOutput


def _softmax(row):
    z = sum(math.exp(x) for x in row)
    return [math.exp(x) / z for x in row]


def test_focal_matches_hand_computed_values_at_gamma_2():
    logits, labels, weight = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0, 2], [1.0, 2.0, 3.0]
    terms = []
    for row, y in zip(logits, labels, strict=True):
        p = _softmax(row)[y]
        terms.append((1 - p) ** 2 * -math.log(p))
    expected_plain = sum(terms) / 2
    expected_weighted = (weight[0] * terms[0] + weight[2] * terms[1]) / (weight[0] + weight[2])
    L, Y = torch.tensor(logits), torch.tensor(labels)
    assert focal_loss(L, Y, gamma=2.0).item() == pytest.approx(expected_plain, rel=1e-6)
    assert focal_loss(L, Y, gamma=2.0, weight=torch.tensor(weight)).item() == pytest.approx(expected_weighted, rel=1e-6)


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_focal_equals_cross_entropy_at_gamma_0(weighted):
    logits, labels = torch.randn(16, 7) * 3, torch.randint(0, 7, (16,))
    weight = torch.rand(7) + 0.1 if weighted else None
    torch.testing.assert_close(
        focal_loss(logits, labels, gamma=0.0, weight=weight), F.cross_entropy(logits, labels, weight)
    )


def test_focal_down_weights_easy_examples():
    easy, hard = torch.tensor([[6.0, 0.0]]), torch.tensor([[0.5, 0.0]])
    label = torch.tensor([0])
    ratio_focal = focal_loss(easy, label) / focal_loss(hard, label)
    ratio_ce = F.cross_entropy(easy, label) / F.cross_entropy(hard, label)
    assert ratio_focal < ratio_ce / 10


def test_inverse_frequency_weights_by_hand():
    counts = class_counts(torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3]), num_classes=4)
    assert counts.tolist() == [2, 6, 0, 4]
    torch.testing.assert_close(inverse_frequency_weights(counts), torch.tensor([2.0, 12 / 18, 0.0, 1.0]))
    with pytest.raises(ValueError, match="counts must be"):
        inverse_frequency_weights(torch.tensor([0, 0]))


def test_info_nce_matches_hand_computed_case():
    video, text, scale = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0], [1.0, 1.0]]), 10.0
    s = 10 * math.sqrt(0.5)  # S = scale * cos = [[10, s], [0, s]]
    rows = -math.log(math.exp(10) / (math.exp(10) + math.exp(s))) - math.log(math.exp(s) / (1 + math.exp(s)))
    cols = -math.log(math.exp(10) / (math.exp(10) + 1)) + math.log(2)
    expected = (rows / 2 + cols / 2) / 2
    assert info_nce(video, text, torch.tensor(scale)).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_symmetric_and_gets_a_temperature_gradient():
    video, text = torch.randn(5, 8), torch.randn(5, 8)
    scale = torch.tensor(3.0, requires_grad=True)
    loss = info_nce(video, text, scale)
    torch.testing.assert_close(loss, info_nce(text, video, scale))
    loss.backward()
    assert scale.grad is not None and scale.grad != 0


def _output(logits, aux_logits, video, text, scale):
    B = logits.shape[0]
    none = torch.zeros(B, 1)
    return GraceOutput(
        logits=logits,
        aux_logits=aux_logits,
        class_logits=None,
        caption=None,
        classes=None,
        motion_weights=none,
        selected_index=none.long(),
        selected_mask=none.bool(),
        video_embedding=video,
        text_embedding=text,
        logit_scale=torch.tensor(scale),
        text_ids=None,
        text_mask=None,
    )


def test_grace_loss_combines_the_terms_with_the_lambdas():
    config = GraceConfig(num_classes=4, lambdas=(1.0, 0.25, 0.75), focal_gamma=1.5)
    logits, aux, video, text = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 8), torch.randn(6, 8)
    labels, weight = torch.randint(0, 4, (6,)), torch.tensor([1.0, 2.0, 0.5, 1.0])
    terms = GraceLoss(config, class_weights=weight)(_output(logits, aux, video, text, 5.0), labels)
    torch.testing.assert_close(terms.focal, focal_loss(logits, labels, 1.5, weight))
    torch.testing.assert_close(terms.contrastive, info_nce(video, text, torch.tensor(5.0)))
    torch.testing.assert_close(terms.auxiliary, F.cross_entropy(aux, labels))
    torch.testing.assert_close(terms.total, terms.focal + 0.25 * terms.contrastive + 0.75 * terms.auxiliary)


def test_grace_loss_without_a_caption_has_no_contrastive_term():
    logits, video = torch.randn(6, 4), torch.randn(6, 8)
    labels = torch.randint(0, 4, (6,))
    terms = GraceLoss(GraceConfig(num_classes=4))(_output(logits, logits, video, None, 5.0), labels)
    assert terms.contrastive == 0
    torch.testing.assert_close(terms.total, focal_loss(logits, labels) + 0.5 * F.cross_entropy(logits, labels))


def test_bad_labels_and_weights_are_named():
    config = GraceConfig(num_classes=4)
    out = _output(torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 8), torch.randn(2, 8), 1.0)
    with pytest.raises(TypeError, match="labels must be a \\[B\\] long tensor"):
        GraceLoss(config)(out, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        GraceLoss(config)(out, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"labels must be \[B\] = \[2\]"):
        GraceLoss(config)(out, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"class_weights must be \[num_classes\] = \[4\]"):
        GraceLoss(config, class_weights=torch.ones(3))

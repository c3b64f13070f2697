"""GRACE's training objective (docs/method.md section 5): weighted focal loss + symmetric InfoNCE + auxiliary CE.

>>> logits, labels = torch.randn(4, 7), torch.tensor([0, 3, 3, 6])
>>> torch.allclose(focal_loss(logits, labels, gamma=0.0), F.cross_entropy(logits, labels))
True
"""

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from grace_fast.model.config import GraceConfig

if TYPE_CHECKING:
    from grace_fast.model.model import GraceOutput


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many of labels ([L] integer class ids) fall in each class -> [num_classes] long."""
    check_labels(labels, num_classes)
    return torch.bincount(labels, minlength=num_classes)


def inverse_frequency_weights(counts: torch.Tensor) -> torch.Tensor:
    """Class weights from training-set class counts [C]: w_c = n / (C' n_c), C' the classes present (mean 1 over
    them, so the loss keeps the scale of the unweighted one); a class absent from training gets weight 0."""
    counts = torch.as_tensor(counts, dtype=torch.float32)
    if counts.dim() != 1 or (counts < 0).any() or counts.sum() == 0:
        raise ValueError(f"counts must be [C] non-negative class counts with a positive total, got {counts.tolist()}")
    present = counts > 0
    return torch.where(present, counts.sum() / (present.sum() * counts.clamp_min(1)), 0)


def focal_loss(
    logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted focal loss: sum_b w_{y_b} (1 - p_b)^gamma (-log p_b) / sum_b w_{y_b}, p_b the probability of y_b.

    logits: [B, C]; labels: [B] long; weight: [C] class weights or None (all 1). gamma = 0 is F.cross_entropy
    with the same weights (its "mean" reduction).
    """
    check_labels(labels, logits.shape[1])
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    if weight is None:
        return loss.mean()
    w = weight.to(loss)[labels]
    return (w * loss).sum() / w.sum()


def info_nce(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between pooled video and text embeddings ([B, d] each), clip b's positive is text b:
    (CE(S, arange) + CE(S^T, arange)) / 2 with S = logit_scale * cos(video_i, text_j)."""
    similarity = logit_scale * F.normalize(video.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    target = torch.arange(similarity.shape[0], device=similarity.device)
    return (F.cross_entropy(similarity, target) + F.cross_entropy(similarity.T, target)) / 2


class LossTerms(NamedTuple):
    """total = lambda1 * focal + lambda2 * contrastive + lambda3 * auxiliary (scalars)."""

    total: torch.Tensor
    focal: torch.Tensor
    contrastive: torch.Tensor
    auxiliary: torch.Tensor


class GraceLoss(nn.Module):
    """L = lambda1 * weighted focal (main head) + lambda2 * symmetric InfoNCE + lambda3 * CE (auxiliary head).

    lambdas and gamma come from the config; class_weights ([num_classes], e.g. inverse_frequency_weights of the
    training labels' class_counts) weight the focal term, None means all 1. The InfoNCE temperature is the model's
    learnable logit_scale (GraceOutput.logit_scale). In class-prompt mode (no caption) the focal term takes the
    auxiliary head's logits, the prediction there, and with no text to contrast the InfoNCE term is 0.
    """

    def __init__(self, config: GraceConfig, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.lambdas, self.gamma, self.num_classes = config.lambdas, config.focal_gamma, config.num_classes
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if class_weights.shape != (config.num_classes,):
                raise ValueError(
                    f"class_weights must be [num_classes] = [{config.num_classes}], got {tuple(class_weights.shape)}"
                )
        self.register_buffer("class_weights", class_weights)

    def forward(self, output: "GraceOutput", labels: torch.Tensor) -> LossTerms:
        if labels.shape != output.logits.shape[:1]:
            raise ValueError(f"labels must be [B] = [{output.logits.shape[0]}], got {tuple(labels.shape)}")
        focal = focal_loss(output.logits, labels, self.gamma, self.class_weights)
        if output.text_embedding is None:
            contrastive = focal.new_zeros(())
        else:
            contrastive = info_nce(output.video_embedding, output.text_embedding, output.logit_scale)
        auxiliary = F.cross_entropy(output.aux_logits.float(), labels)
        l1, l2, l3 = self.lambdas
        return LossTerms(l1 * focal + l2 * contrastive + l3 * auxiliary, focal, contrastive, auxiliary)


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.dim() != 1:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"labels must be a [B] long tensor of class ids, got {got}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values {labels.min()}..{labels.max()}")

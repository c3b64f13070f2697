"""Fusion and classification heads (GRACE.md section 5)."""

import torch
from torch import nn

from grace_fast.model.config import GraceConfig


class FusionHead(nn.Module):
    """z = MLP([pool(V'), pool(U_hat), pool(U)]) -> logits: [B, 3d] -> [B, num_classes] (the main head)."""

    def __init__(self, config: GraceConfig):
        super().__init__()
        d = config.dim
        self.fusion = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Dropout(config.dropout))
        self.classifier = nn.Linear(d, config.num_classes)

    def forward(self, video: torch.Tensor, aligned: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """video, aligned, text: [B, d] -> logits [B, num_classes]."""
        return self.classifier(self.fusion(torch.cat([video, aligned, text], dim=-1)))


class AuxiliaryHead(nn.Module):
    """Linear on pool(V') alone: the auxiliary loss's head and CATE's coarse (baseline) classifier."""

    def __init__(self, config: GraceConfig):
        super().__init__()
        self.classifier = nn.Linear(config.dim, config.num_classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: [B, d] -> logits [B, num_classes]."""
        return self.classifier(video)

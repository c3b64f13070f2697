"""Fusion and classification heads (docs/method.md section 5)."""

import math

import torch
from torch import nn

from grace_fast.model.config import GraceConfig

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of a learnable inverse temperature: tau >= 0.01


class FusionHead(nn.Module):
    """The main head: z = MLP([pool(V'), v_txt, pool(U), s]) -> logits, [B, 3d + 1] -> [B, num_classes]."""

    def __init__(self, config: GraceConfig):
        super().__init__()
        d = config.dim
        self.fusion = nn.Sequential(nn.Linear(3 * d + 1, d), nn.GELU(), nn.Dropout(config.dropout))
        self.classifier = nn.Linear(d, config.num_classes)

    def forward(
        self, video: torch.Tensor, v_txt: torch.Tensor, text: torch.Tensor, similarity: torch.Tensor
    ) -> torch.Tensor:
        """video, v_txt, text: [B, d]; similarity: [B] -> logits [B, num_classes]."""
        fused = torch.cat([video, v_txt, text, similarity.unsqueeze(-1).to(video.dtype)], dim=-1)
        return self.classifier(self.fusion(fused))


class AuxiliaryHead(nn.Module):
    """aux_logits = linear(pool(V')) + class_logits, class_logits = s(V, U_c) / tau_cls: CATE's baseline classifier
    and the class-prompt prediction. tau_cls is learnt through its log (initial config.class_temperature_init); with
    alignment "none" nothing scores a class and the head is the linear part alone."""

    def __init__(self, config: GraceConfig):
        super().__init__()
        self.classifier = nn.Linear(config.dim, config.num_classes)
        scale = None
        if config.alignment != "none":
            scale = nn.Parameter(torch.tensor(math.log(1 / config.class_temperature_init)))
        self.register_parameter("class_scale", scale)

    def forward(
        self, video: torch.Tensor, class_similarity: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """video: [B, d]; class_similarity: [B, num_classes] (s of each class's prompt) or None ->
        (aux_logits, class_logits), each [B, num_classes] (class_logits None when class_similarity is)."""
        logits = self.classifier(video)
        if class_similarity is None:
            return logits, None
        class_logits = class_similarity * self.class_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return logits + class_logits, class_logits

"""The GRACE model layer (docs/method.md sections 4 and 5): GraceConfig, GraceModel, its losses and checkpoints."""

from grace_fast.model.config import GraceConfig
from grace_fast.model.losses import (
    GraceLoss,
    LossTerms,
    class_counts,
    focal_loss,
    info_nce,
    inverse_frequency_weights,
)
from grace_fast.model.model import GraceModel, GraceOutput

__all__ = [
    "GraceConfig",
    "GraceLoss",
    "GraceModel",
    "GraceOutput",
    "LossTerms",
    "class_counts",
    "focal_loss",
    "info_nce",
    "inverse_frequency_weights",
]

"""The GRACE model layer (docs/method.md sections 4 and 5): GraceConfig, GraceModel, its losses and checkpoints.

Importing it registers model_type "grace" with transformers' AutoConfig and AutoModel (model.hf): a checkpoint's
config.json names it, and transformers reads that file when it loads the checkpoint's tokenizer too.
"""

from grace_fast.model import hf
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

hf.register()

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

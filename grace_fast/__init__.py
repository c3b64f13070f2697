"""grace_fast: fast ops and model stack for GRACE dynamic facial expression recognition.

>>> import grace_fast
>>> grace_fast.backends()["torch"]
True
"""

from grace_fast import ops
from grace_fast.model import GraceConfig, GraceModel
from grace_fast.ops._backends import backends

__version__ = "0.1.0"
__all__ = ["GraceConfig", "GraceModel", "Predictor", "backends", "ops", "__version__"]


def __getattr__(name: str):
    if name == "Predictor":  # imported on first use: inference pulls in the data stack
        from grace_fast.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'grace_fast' has no attribute {name!r}")

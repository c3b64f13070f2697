"""grace_fast: fast ops and model stack for GRACE dynamic facial expression recognition.

>>> import grace_fast
>>> grace_fast.backends()["torch"]
True
"""

from grace_fast import ops
from grace_fast._backends import backends
from grace_fast.model import GraceConfig, GraceModel

__version__ = "0.1.0"
__all__ = ["GraceConfig", "GraceModel", "backends", "ops", "__version__"]

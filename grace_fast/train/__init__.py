"""Training: `train(TrainConfig(...))` (and `grace-fast train`) runs GRACE's protocol; `fit` is the loop itself,
for any model behind its small interfaces.

>>> from grace_fast.train import TrainConfig, train  # doctest: +SKIP
>>> result = train(TrainConfig(data_root="data/synthetic", epochs=3, out="runs/tiny"))  # doctest: +SKIP
"""

from grace_fast.train.config import TrainConfig
from grace_fast.train.loop import FitResult, fit

__all__ = ["FitResult", "TrainConfig", "fit", "train"]


def __getattr__(name: str):
    if name == "train":  # imported on first use: it pulls in the model and data stacks
        from grace_fast.train.run import train

        return train
    raise AttributeError(f"module 'grace_fast.train' has no attribute {name!r}")

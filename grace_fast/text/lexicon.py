"""The CATE lexicon: the facial action units and descriptor phrases of each emotion, and the lexicon's names of
each data set's classes (grace_fast.data.layouts.LAYOUTS, in label order).

The data lives in grace_fast/text/lexicon.json; its "about" field says where each part comes from.

>>> lexicon = Lexicon.load()
>>> lexicon.classes("dfew")
('happiness', 'sadness', 'neutral', 'anger', 'surprise', 'disgust', 'fear')
>>> [unit.au for unit in lexicon.action_units("happy")]
['AU6', 'AU12']
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from grace_fast.data.layouts import LAYOUTS

DEFAULT_PATH = Path(__file__).with_name("lexicon.json")


@dataclass(frozen=True)
class ActionUnit:
    """One facial action unit: its FACS code ("AU12"), FACS name and the phrase that describes it in text."""

    au: str
    name: str
    phrase: str


@dataclass(frozen=True)
class Lexicon:
    """Action units per emotion and aliases of class names."""

    version: int
    emotions: dict[str, tuple[ActionUnit, ...]]
    aliases: dict[str, str]

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT_PATH) -> "Lexicon":
        """Read and check a lexicon file (the built-in one by default)."""
        try:
            data = json.loads(Path(path).read_text())
            lexicon = cls(
                version=data["version"],
                emotions={
                    name: tuple(ActionUnit(**unit) for unit in units) for name, units in data["emotions"].items()
                },
                aliases=dict(data["aliases"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"lexicon file {path} is not a valid lexicon: {error!r}") from error
        for name, units in lexicon.emotions.items():
            if not units:
                raise ValueError(f"lexicon file {path}: emotion {name!r} has no action units")
        named = {lexicon.aliases.get(c, c) for layout in LAYOUTS.values() for c in layout.classes or ()}
        unknown = named | set(lexicon.aliases.values())
        unknown -= set(lexicon.emotions)
        if unknown:
            raise ValueError(f"lexicon file {path}: classes or aliases without an emotion entry: {sorted(unknown)}")
        return lexicon

    def classes(self, dataset: str) -> tuple[str, ...]:
        """The lexicon's names of a data set's classes ("dfew", "ferv39k", "mafw", ...) in the index order of the
        logits."""
        named = sorted(name for name, layout in LAYOUTS.items() if layout.classes)
        if dataset.lower() not in named:
            raise ValueError(f"dataset must be one of {named}, got {dataset!r}")
        return tuple(self.emotion(name) for name in LAYOUTS[dataset.lower()].classes)

    def emotion(self, name: str) -> str:
        """The lexicon's name for an emotion, e.g. "Happy" -> "happiness"."""
        key = name.strip().lower()
        key = self.aliases.get(key, key)
        if key not in self.emotions:
            raise ValueError(
                f"unknown emotion {name!r}; known: {sorted(self.emotions)}, aliases: {sorted(self.aliases)}"
            )
        return key

    def action_units(self, emotion: str) -> tuple[ActionUnit, ...]:
        """The action units of an emotion (any spelling that emotion() accepts)."""
        return self.emotions[self.emotion(emotion)]

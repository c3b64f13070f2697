"""The words of CATE: the refiner's versioned prompt, the deterministic template that stands in without an
LLM endpoint, and the class prompts of the low-latency mode (docs/method.md section 3).

Changing a text here means bumping PROMPT_VERSION or TEMPLATE_VERSION, which are part of every cache key.

>>> lexicon = Lexicon.load()
>>> template_description("A man speaks", ["happiness"], lexicon)
'A man speaks. The face suggests happiness, with cheeks raised (AU6) and lip corners pulled up (AU12).'
>>> class_prompt("happiness", lexicon)
'a face showing happiness: cheeks raised, lip corners pulled up'
"""

from collections.abc import Sequence

from grace_fast.text.lexicon import ActionUnit, Lexicon

PROMPT_VERSION = "cate-v1"
TEMPLATE_VERSION = "template-v1"

SYSTEM_PROMPT = (
    "You write short, factual descriptions of the face in a video clip for an emotion recognition model. "
    "You describe only visible facial behaviour and name the facial action units you rely on."
)

USER_PROMPT = """Caption of the clip: {caption}
Likely emotions from a visual classifier, most likely first: {emotions}.
Facial action units that show them:
{action_units}
Rewrite the caption into one emotion-aware description of the person's face in at most 60 words. Keep the facts \
of the caption, describe the action units of the likely emotions that fit it, naming each with its code \
(for example "lip corners pulled up (AU12)"), and do not add events the caption does not support. Answer with \
the description only."""


def render_messages(caption: str, labels: Sequence[str], lexicon: Lexicon) -> list[dict[str, str]]:
    """The chat messages (system, user) that ask the LLM to rewrite caption with the action units of labels."""
    emotions = [lexicon.emotion(label) for label in labels]
    units = "\n".join(f"- {e}: " + "; ".join(_named(u) for u in lexicon.action_units(e)) for e in emotions)
    user = USER_PROMPT.format(caption=_clean(caption) or "(none)", emotions=", ".join(emotions), action_units=units)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def template_description(caption: str, labels: Sequence[str], lexicon: Lexicon) -> str:
    """The caption followed by one sentence naming the action units of each label: the LLM-free description."""
    emotions = [lexicon.emotion(label) for label in labels]
    parts = [f"{e}, with {_and(_coded(u) for u in lexicon.action_units(e))}" for e in emotions]
    sentence = f"The face suggests {', or '.join(parts)}." if parts else ""
    caption = _clean(caption)
    if caption and caption[-1] not in ".!?":
        caption += "."
    return " ".join(s for s in (caption, sentence) if s)


def class_prompt(emotion: str, lexicon: Lexicon) -> str:
    """The text of a class in the low-latency mode, e.g. "a face showing happiness: cheeks raised, lip ..."."""
    name = lexicon.emotion(emotion)
    return f"a face showing {name}: " + ", ".join(u.phrase for u in lexicon.action_units(name))


def _clean(text: str) -> str:
    return " ".join(text.split())


def _named(unit: ActionUnit) -> str:
    return f"{unit.phrase} ({unit.au}, {unit.name})"


def _coded(unit: ActionUnit) -> str:
    return f"{unit.phrase} ({unit.au})"


def _and(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

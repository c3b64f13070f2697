"""CATE, the offline text pipeline (docs/method.md section 3): captions, coarse labels, action-unit lexicon, refinement.

The captioner (grace_fast.text.captioner, needs transformers) and the coarse labeller
(grace_fast.text.coarse_labels) are imported from their modules; the rest is here.
"""

from grace_fast.text.cache import Cache, cache_key
from grace_fast.text.lexicon import ActionUnit, Lexicon
from grace_fast.text.prompt import PROMPT_VERSION, class_prompt, render_messages, template_description
from grace_fast.text.refiner import ClipText, Endpoint, EndpointError, Refiner, load_descriptions, refine_clips

__all__ = [
    "PROMPT_VERSION",
    "ActionUnit",
    "Cache",
    "ClipText",
    "Endpoint",
    "EndpointError",
    "Lexicon",
    "Refiner",
    "cache_key",
    "class_prompt",
    "load_descriptions",
    "refine_clips",
    "render_messages",
    "template_description",
]

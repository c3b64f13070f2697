"""The CATE lexicon and the words built from it: the refiner prompt, the template fallback, class prompts."""

import json

import pytest

from grace_fast.text.lexicon import DEFAULT_PATH, Lexicon
from grace_fast.text.prompt import (
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    class_prompt,
    render_messages,
    template_description,
)

LEXICON = Lexicon.load()
MAFW = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
MAFW += ["contempt", "anxiety", "helplessness", "disappointment"]


def test_dataset_classes_in_logit_order():
    assert LEXICON.classes("dfew") == ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")
    assert LEXICON.classes("FERV39k") == LEXICON.classes("dfew")
    assert LEXICON.classes("mafw") == tuple(MAFW)


def test_every_class_has_action_units_with_facs_codes():
    for emotion in MAFW:
        units = LEXICON.action_units(emotion)
        assert units and all(u.au.startswith("AU") and u.name and u.phrase for u in units), emotion


def test_action_units_of_grace_md_examples():
    assert [(u.au, u.name) for u in LEXICON.action_units("happiness")] == [
        ("AU6", "cheek raiser"),
        ("AU12", "lip corner puller"),
    ]
    assert [u.au for u in LEXICON.action_units("surprise")] == ["AU1+AU2", "AU5", "AU26"]


@pytest.mark.parametrize("name, expected", [("Happy", "happiness"), (" SAD ", "sadness"), ("anger", "anger")])
def test_emotion_names_accept_aliases_and_case(name, expected):
    assert LEXICON.emotion(name) == expected


def test_unknown_emotion_and_dataset_are_named():
    with pytest.raises(ValueError, match="unknown emotion 'boredom'"):
        LEXICON.emotion("boredom")
    with pytest.raises(ValueError, match="dataset must be one of .*'afew'"):
        LEXICON.classes("afew")


def test_a_lexicon_file_whose_class_has_no_entry_is_rejected(tmp_path):
    data = json.loads(DEFAULT_PATH.read_text())
    del data["emotions"]["contempt"]
    (tmp_path / "lexicon.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"lexicon.json: classes or aliases without an emotion entry: \['contempt'\]"):
        Lexicon.load(tmp_path / "lexicon.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json is not a valid lexicon"):
        Lexicon.load(tmp_path / "broken.json")


def test_render_messages_exact():
    messages = render_messages("A man  talks,\n then looks down", ["sad", "neutral"], LEXICON)
    assert PROMPT_VERSION == "cate-v1"
    assert messages == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": "Caption of the clip: A man talks, then looks down\n"
            "Likely emotions from a visual classifier, most likely first: sadness, neutral.\n"
            "Facial action units that show them:\n"
            "- sadness: inner brows raised (AU1, inner brow raiser); brows drawn together (AU4, brow lowerer); "
            "lip corners pulled down (AU15, lip corner depressor)\n"
            "- neutral: facial muscles relaxed (AU0, neutral face)\n"
            "Rewrite the caption into one emotion-aware description of the person's face in at most 60 words. "
            "Keep the facts of the caption, describe the action units of the likely emotions that fit it, naming "
            'each with its code (for example "lip corners pulled up (AU12)"), and do not add events the caption '
            "does not support. Answer with the description only.",
        },
    ]
    assert SYSTEM_PROMPT == (
        "You write short, factual descriptions of the face in a video clip for an emotion recognition model. "
        "You describe only visible facial behaviour and name the facial action units you rely on."
    )


def test_render_messages_marks_an_empty_caption():
    assert render_messages("  ", ["happiness"], LEXICON)[1]["content"].startswith("Caption of the clip: (none)\n")


@pytest.mark.parametrize(
    "caption, labels, expected",
    [
        (
            "A man talks",
            ["happiness", "surprise"],
            "A man talks. The face suggests happiness, with cheeks raised (AU6) and lip corners pulled up (AU12), "
            "or surprise, with brows raised (AU1+AU2), upper eyelids raised (AU5) and jaw dropped (AU26).",
        ),
        (
            " A woman\nshouts! ",
            ["Angry"],
            "A woman shouts! The face suggests anger, with brows lowered and drawn together (AU4), eyes glaring "
            "(AU5), eyelids tightened (AU7) and lips pressed thin (AU23).",
        ),
        ("", ["neutral"], "The face suggests neutral, with facial muscles relaxed (AU0)."),
        ("A child smiles.", [], "A child smiles."),
    ],
    ids=["two-labels", "alias-and-whitespace", "no-caption", "no-labels"],
)
def test_template_description_exact(caption, labels, expected):
    assert template_description(caption, labels, LEXICON) == expected


def test_class_prompt_is_grace_md_low_latency_text():
    assert class_prompt("happy", LEXICON) == "a face showing happiness: cheeks raised, lip corners pulled up"
    assert class_prompt("disappointment", LEXICON) == (
        "a face showing disappointment: brows slightly lowered, lip corners pulled down, "
        "chin raised with the lower lip pushed up, gaze lowered"
    )

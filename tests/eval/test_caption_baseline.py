"""grace_fast.eval.caption_baseline: a bag of words finds a class named in the text, and only then."""

import numpy as np
import pytest

from grace_fast.eval.caption_baseline import bag_of_words_metrics, word_counts

CLASSES = ["alpha", "bravo", "charlie"]


def _texts(rng: np.random.Generator, labels: np.ndarray, name_the_class: bool) -> list[str]:
    filler = ["red", "blue", "green", "wall", "person", "hair", "turns", "blinks"]
    texts = []
    for label in labels:
        words = list(rng.choice(filler, 5))
        texts.append(" ".join(words + ([CLASSES[label]] if name_the_class else [])))
    return texts


@pytest.mark.parametrize("name_the_class", [True, False], ids=["named", "not-named"])
def test_a_bag_of_words_scores_a_named_class_perfectly_and_random_words_near_chance(name_the_class):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 3, 600), rng.integers(0, 3, 300)
    metrics = bag_of_words_metrics(
        _texts(rng, train, name_the_class), train, _texts(rng, test, name_the_class), test, len(CLASSES)
    )
    if name_the_class:
        assert metrics.uar == 1.0
    else:
        assert abs(metrics.uar - 1 / 3) < 0.1


def test_word_counts_count_lower_cased_words_of_the_vocabulary_only():
    counts = word_counts(["The brows, the BROWS!", "nothing known"], {"brows": 0, "the": 1})
    np.testing.assert_array_equal(counts.numpy(), [[2, 2], [0, 0]])


def test_texts_and_labels_must_pair_up():
    with pytest.raises(ValueError, match="texts and labels must pair up, got 2 / 1 training"):
        bag_of_words_metrics(["a", "b"], [0], ["a"], [0], 2)

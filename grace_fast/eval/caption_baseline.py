"""The caption-only baseline: how much of the label a clip's caption gives away without its video.

A multinomial logistic regression on bag-of-words counts (lower-cased letter runs, the vocabulary of the training
captions), its weights L2-penalised as scikit-learn's default (C = 1: the summed cross-entropy plus half the squared
norm; the bias is free), fitted by L-BFGS in float64 on the training fold and scored on the test fold (UAR and WAR of
eval.metrics). On the synthetic set it measures the leak that issue 17 removed from the captions: a caption that
names the emotion or the action units of its class lets a text-only model score without looking at the clip.

    python -m grace_fast.eval.caption_baseline --clips 1000 --seed 0 --out docs/runs/caption-bow-seed0.json
    python -m grace_fast.eval.caption_baseline --data demo/data --out bow.json   # a make-synthetic folder

>>> m = bag_of_words_metrics(["a smile", "a frown", "big smile"], [0, 1, 0], ["smile here", "frown"], [0, 1], 2)
>>> m.uar, m.war
(1.0, 1.0)
"""

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from grace_fast.eval.metrics import Metrics, classification_metrics
from grace_fast.files import write_atomic

WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """The lower-cased letter runs of text."""
    return WORD.findall(text.lower())


def word_counts(texts: Sequence[str], vocabulary: dict[str, int]) -> torch.Tensor:
    """[L, V] float64 counts of each vocabulary word (vocabulary: word -> column) in each of L texts."""
    counts = np.zeros((len(texts), len(vocabulary)))
    for row, text in enumerate(texts):
        columns = [vocabulary[word] for word in words(text) if word in vocabulary]
        np.add.at(counts[row], columns, 1)
    return torch.from_numpy(counts)


def bag_of_words_metrics(
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    test_texts: Sequence[str],
    test_labels: Sequence[int],
    num_classes: int,
    l2: float = 1.0,
) -> Metrics:
    """Fit the caption-only classifier on the training texts ([L] each, labels in [0, num_classes)) and score it on
    the test texts; l2 is the weights' penalty (1 / C)."""
    if len(train_texts) != len(train_labels) or len(test_texts) != len(test_labels):
        raise ValueError(
            f"texts and labels must pair up, got {len(train_texts)} / {len(train_labels)} training and "
            f"{len(test_texts)} / {len(test_labels)} test entries"
        )
    vocabulary = {word: i for i, word in enumerate(sorted({w for text in train_texts for w in words(text)}))}
    x, y = word_counts(train_texts, vocabulary), torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    weight = torch.zeros(len(vocabulary), num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (
            torch.nn.functional.cross_entropy(x @ weight + bias, y, reduction="sum") + 0.5 * l2 * weight.square().sum()
        )
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predictions = (word_counts(test_texts, vocabulary) @ weight + bias).argmax(dim=1)
    return classification_metrics(list(test_labels), predictions.tolist(), num_classes)


def synthetic_caption_metrics(clips: int, seed: int, fold: int = 1) -> Metrics:
    """The baseline on the captions of `make-synthetic --clips clips --seed seed` (drawn from the generator, no clip
    is rendered), trained on the folds other than `fold` and tested on `fold`."""
    from grace_fast.data.layouts import DFEW_CLASSES
    from grace_fast.data.synthetic import folds, sample_specs

    specs = sample_specs(clips, seed)
    test = folds(specs, seed) == fold
    parts = {
        split: [s for s, t in zip(specs, test, strict=True) if t == (split == "test")] for split in ("train", "test")
    }
    return bag_of_words_metrics(
        [s.caption for s in parts["train"]],
        [s.label for s in parts["train"]],
        [s.caption for s in parts["test"]],
        [s.label for s in parts["test"]],
        len(DFEW_CLASSES),
    )


def folder_caption_metrics(root: str | Path, fold: int = 1) -> Metrics:
    """The baseline on a `make-synthetic` folder's captions.csv and fold files (a set made by any version)."""
    from grace_fast.data.layouts import load_clips

    train, test = (load_clips("synthetic", root, fold=fold, split=split) for split in ("train", "test"))
    return bag_of_words_metrics(
        [c.caption or "" for c in train],
        train.labels.tolist(),
        [c.caption or "" for c in test],
        test.labels.tolist(),
        len(train.classes),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grace_fast.eval.caption_baseline", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--clips", type=int, default=1000, help="clips of the synthetic set (default 1000, the demo's)")
    parser.add_argument("--seed", type=int, default=0, help="its seed (default 0)")
    parser.add_argument(
        "--data", help="a make-synthetic folder to read instead of drawing the set (--clips, --seed unused)"
    )
    parser.add_argument("--fold", type=int, default=1, help="the test fold (default 1, the demo's)")
    parser.add_argument("--out", help="a JSON file to write the record to")
    args = parser.parse_args(argv)
    if args.data:
        manifest = Path(args.data) / "synthetic.json"
        arguments = json.loads(manifest.read_text()) if manifest.is_file() else None
        metrics, source = folder_caption_metrics(args.data, args.fold), {"data": args.data, "set": arguments}
    else:
        from grace_fast.data.synthetic import CAPTION_RATES, VERSION

        metrics = synthetic_caption_metrics(args.clips, args.seed, args.fold)
        source = {"clips": args.clips, "seed": args.seed, "generator_version": VERSION, "caption_rates": CAPTION_RATES}
    record = {
        "measure": "caption-only bag-of-words logistic regression (grace_fast.eval.caption_baseline)",
        **source,
        "fold": args.fold,
        "test_clips": metrics.num_samples,
        "uar": metrics.uar,
        "war": metrics.war,
        "recall": metrics.recall,
        "confusion": metrics.confusion,
    }
    uar, war = 100 * metrics.uar, 100 * metrics.war
    clips = metrics.num_samples
    print(f"caption-only bag of words, test fold {args.fold} ({clips} clips): UAR {uar:.1f}%, WAR {war:.1f}%")
    if args.out:
        write_atomic(Path(args.out), (json.dumps(record, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

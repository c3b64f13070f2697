"""Tiny random GRACE set-ups built offline (no downloads): for the tests, the README demo and quick training runs.

A real CLIP byte-level BPE tokenizer is trained on a small built-in corpus and written as a CLIP tokenizer
folder; the backbones are small random VideoMAE and CLIP text towers.

>>> import tempfile
>>> folder = build_tiny_tokenizer(tempfile.mkdtemp())
>>> config = tiny_config(folder, frames=16)
>>> (config.frames, config.image_size, config.video["hidden_size"])
(16, 32, 32)
"""

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from grace_fast.model.config import GraceConfig

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenisation: its special tokens, English contractions, letter runs, single digits, other symbol runs
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

CORPUS = (
    "a face showing happiness: cheeks raised, lip corners pulled up",
    "a face showing sadness: inner brows raised, brows lowered, lip corners pulled down",
    "a face showing surprise: brows raised, upper lids raised, jaw dropped",
    "a face showing anger: brows lowered, lids tightened, lips pressed together",
    "a face showing disgust: nose wrinkled, upper lip raised",
    "a face showing fear: brows raised and drawn together, lips stretched",
    "a face showing neutral: a relaxed face with no clear movement",
    "a face showing contempt, anxiety, helplessness or disappointment",
    "a man speaks to the camera and then smiles at someone off screen",
    "a woman looks down, frowns and shakes her head slowly",
    "the person turns the head to the left while the eyes blink twice",
    "the face suggests happiness, with cheeks raised (AU6) and lip corners pulled up (AU12).",
)


def build_tiny_tokenizer(folder: str | os.PathLike, vocab_size: int = 768, corpus: Iterable[str] = CORPUS) -> Path:
    """Train a CLIP byte-level BPE tokenizer on corpus (default CORPUS) and save it as a CLIP tokenizer folder;
    returns the folder.

    Ids: BOS 0, EOS 1 (also the pad token, as in CLIP), then every byte alone and with CLIP's end-of-word suffix
    "</w>" (so any text encodes), then the merged tokens in merge order, at most vocab_size in all (CORPUS gives
    233 merges, 747 tokens). The folder is the same, byte for byte, in every process and on every run.
    """
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([BOS, EOS, *alphabet, *(c + "</w>" for c in alphabet)])}
    if vocab_size < len(vocab):
        raise ValueError(
            f"vocab_size must be at least {len(vocab)} (2 special tokens, 2 x 256 bytes), got {vocab_size}"
        )
    words = Counter(
        word for text in corpus for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    merges = bpe_merges(words, vocab_size - len(vocab))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bpe_merges(words: Mapping[str, int], count: int) -> list[tuple[str, str]]:
    """Up to count BPE merges learnt from words ({word: frequency}; a word's last symbol carries "</w>"): the most
    frequent adjacent pair first, ties broken by the pairs' text order, so that no hash order can change them
    (tokenizers' BpeTrainer breaks ties by ids that it assigns in hash order).

    >>> bpe_merges({"aaab": 1}, 3)
    [('a', 'a'), ('a', 'b</w>'), ('aa', 'ab</w>')]
    """
    symbols = {word: [*word[:-1], word[-1] + "</w>"] for word in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, pieces in symbols.items():
            for pair in zip(pieces[:-1], pieces[1:], strict=True):
                pairs[pair] += words[word]
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        symbols = {word: _merge(pieces, best) for word, pieces in symbols.items()}
    return merges


def _merge(pieces: list[str], pair: tuple[str, str]) -> list[str]:
    """pieces with each occurrence of pair, scanned left to right, joined into one symbol."""
    out, i = [], 0
    while i < len(pieces):
        if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
            out.append(pieces[i] + pieces[i + 1])
            i += 2
        else:
            out.append(pieces[i])
            i += 1
    return out


def tiny_video_config(**overrides: Any) -> dict[str, Any]:
    """VideoMAEConfig fields of a tiny random ViT: 32 px, patch 8 (4 x 4 patches), tubelet 2, width 32, 2 layers."""
    return {
        "patch_size": 8,
        "tubelet_size": 2,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "use_mean_pooling": False,
        **overrides,
    }


def tiny_text_config(tokenizer_folder: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """CLIPTextConfig fields of a tiny random text tower sized to the tokenizer in tokenizer_folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 24,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **overrides,
    }


def tiny_config(tokenizer_folder: str | os.PathLike, **overrides: Any) -> GraceConfig:
    """A GraceConfig with tiny random backbones (32 px clips, 4 x 4 patches, d = 16) and 7 class prompts."""
    values: dict[str, Any] = {
        "num_classes": 7,
        "class_prompts": list(CORPUS[:7]),
        "image_size": 32,
        "video": tiny_video_config(),
        "text": tiny_text_config(tokenizer_folder),
        "tokenizer": str(tokenizer_folder),
        "dim": 16,
        "attention_heads": 4,
        "dropout": 0.0,
    }
    values.update(overrides)
    return GraceConfig(**values)


def demo_config(tokenizer_folder: str | os.PathLike, **overrides: Any) -> GraceConfig:
    """The README demo's GRACE: tiny_config on 8 frames (4 tubelets: training takes about 40% less time than on 16
    frames, at the same test UAR on the synthetic set) with the InfoNCE term weighted 0.1 instead of the paper's
    0.5: lambdas (1, 0.1, 0.5). At 0.5, InfoNCE learns to pair each clip with its caption while the classifier
    stays at chance over the demo's 16 epochs."""
    return tiny_config(tokenizer_folder, **{"frames": 8, "lambdas": (1.0, 0.1, 0.5), **overrides})

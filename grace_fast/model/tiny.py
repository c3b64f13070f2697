"""Tiny random GRACE set-ups built offline (no downloads): for the tests, the README demo and quick training runs.

A real CLIP byte-level BPE tokenizer is trained on a small built-in corpus and written as a CLIP tokenizer
folder; the backbones are small random VideoMAE and CLIP text towers.

>>> import tempfile
>>> folder = build_tiny_tokenizer(tempfile.mkdtemp())
>>> config = tiny_config(folder, frames=16)
>>> (config.frames, config.image_size, config.video["hidden_size"])
(16, 32, 32)
"""

import json
import os
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


def build_tiny_tokenizer(folder: str | os.PathLike, vocab_size: int = 600) -> Path:
    """Train a CLIP byte-level BPE tokenizer on CORPUS and save it as a CLIP tokenizer folder; returns the folder.

    Every byte (alone and with CLIP's end-of-word suffix "</w>") is in the vocabulary, so any text encodes.
    BOS is id 0 and EOS (also the pad token, as in CLIP) id 1.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=EOS))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    return folder


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

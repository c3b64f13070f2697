"""The text encoder: CLIP text tower + tokenizer from local folders, token embeddings with a content mask, and
the cached class prompts of the low-latency mode (docs/method.md sections 3 and 4)."""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from grace_fast.model.config import GraceConfig, check_folder


class TextTokens(NamedTuple):
    """embeddings [B, N, Dt]; mask [B, N] bool (True = a content token: no padding, no BOS/EOS); ids [B, N] long."""

    embeddings: torch.Tensor
    mask: torch.Tensor
    ids: torch.Tensor


def content_mask(attention_mask: torch.Tensor, special_tokens_mask: torch.Tensor) -> torch.Tensor:
    """[B, N] bool: attended tokens that are not special (BOS, EOS, padding).

    A text with no content token (empty) keeps its last attended token, CLIP's EOS summary, so that every row
    has a valid token for the transport marginals and the pools.

    >>> content_mask(torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]), torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]))
    tensor([[False,  True, False, False],
            [False,  True, False, False]])
    """
    mask = attention_mask.bool() & ~special_tokens_mask.bool()
    empty = ~mask.any(dim=1)
    last = (attention_mask.sum(dim=1) - 1).clamp_min(0)
    mask[empty, last[empty]] = True
    return mask


def load_tokenizer(folder: str):
    """The CLIP tokenizer saved in the local folder (tokenizer.json or vocab.json + merges.txt); never the hub."""
    from pathlib import Path

    from transformers import AutoTokenizer

    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist (a local CLIP tokenizer folder is needed)")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"no CLIP tokenizer could be loaded from {path}: {error}") from error


class TextEncoder(nn.Module):
    """transformers.CLIPTextModel (from config.text, or the local folder config.text_pretrained) and its tokenizer.

    Class prompts (config.class_prompts) are encoded once in eval mode and cached: the low-latency mode. The cache
    is dropped by train(), load_state_dict and moves or casts (.to()); in train mode prompts are encoded every call so
    that their gradients flow.
    """

    def __init__(self, config: GraceConfig, tokenizer=None, load_pretrained: bool = True):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        if tokenizer is None:
            folder = config.tokenizer or config.text_pretrained
            if folder is None:
                raise ValueError("GraceConfig needs tokenizer (or text_pretrained): a local CLIP tokenizer folder")
            tokenizer = load_tokenizer(folder)
        self.tokenizer = tokenizer
        if load_pretrained and config.text_pretrained is not None:
            check_folder("text_pretrained", config.text_pretrained)
            self.model = CLIPTextModel.from_pretrained(config.text_pretrained, local_files_only=True)
        else:
            self.model = CLIPTextModel(CLIPTextConfig(**config.text))
        text = self.model.config
        if len(tokenizer) > text.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the text model's vocab_size is {text.vocab_size}"
            )
        if config.max_text_tokens > text.max_position_embeddings:
            raise ValueError(
                f"max_text_tokens ({config.max_text_tokens}) exceeds the text model's "
                f"max_position_embeddings ({text.max_position_embeddings})"
            )
        self.max_tokens = config.max_text_tokens
        self.prompts = list(config.class_prompts) if config.class_prompts is not None else None
        self.hidden_size = text.hidden_size
        self._prompt_cache: TextTokens | None = None
        if config.gradient_checkpointing:
            self.model.activation_checkpointing_enable({"use_reentrant": False})

    def forward(self, texts: Sequence[str]) -> TextTokens:
        """Encode a batch of texts (refined descriptions or captions) -> TextTokens [B, N, Dt]."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("text must be a list of strings, one per clip")
        device = self.model.get_input_embeddings().weight.device
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        embeddings = self.model(input_ids=ids, attention_mask=attention).last_hidden_state
        return TextTokens(embeddings, content_mask(attention, batch["special_tokens_mask"].to(device)), ids)

    def class_prompts(self) -> TextTokens:
        """The encodings of all class prompts, [num_classes, N, Dt]; cached in eval mode."""
        if self.prompts is None:
            raise ValueError("no text given and the config has no class_prompts (the low-latency mode needs them)")
        if self.training:
            return self(self.prompts)
        if self._prompt_cache is None:
            with torch.no_grad():
                self._prompt_cache = self(self.prompts)
        return self._prompt_cache

    def clear_cache(self) -> None:
        self._prompt_cache = None

    def train(self, mode: bool = True):
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half() make the cached encodings stale
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)

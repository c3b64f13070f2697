"""GraceModel: VideoMAE tokens -> motion weighting -> token selection; CLIP text tokens; projection to d;
alignment (token-level OT by default); fusion and heads (GRACE.md data flow, sections 1, 2, 4 and 5)."""

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from grace_fast import ops
from grace_fast.model.alignment import build_alignment, masked_mean
from grace_fast.model.config import GraceConfig
from grace_fast.model.heads import AuxiliaryHead, FusionHead
from grace_fast.model.text import TextEncoder, TextTokens
from grace_fast.model.video import VideoEncoder

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of the learnable InfoNCE temperature 1 / tau


@dataclass
class GraceOutput:
    """What GraceModel returns for a batch of B clips (K kept visual tokens, N text tokens, d = config.dim).

    logits, aux_logits: [B, num_classes] (main head, auxiliary head on the video alone);
    plan: [B, N, K] OT plan (attention weights for "cross_attention", [B, 1, K] for "cosine", None for "none");
    ot_cost: [B] <P, C> (None unless alignment is "ot");
    motion_weights: [B, T', H', W'] float32 (all 1 with motion "off");
    selected_index: [B, K] long, flat (t, h, w) index of each kept token; selected_mask: [B, K] bool;
    video_embedding, text_embedding: [B, d] pooled V' and pooled U (the InfoNCE pair);
    logit_scale: scalar, the learnable InfoNCE temperature 1 / tau;
    text_ids, text_mask: [B, N] the token ids of the aligned text and its content mask;
    prompt_classes: [B, k] the classes whose prompts were the text (class-prompt mode), else None.
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor
    plan: torch.Tensor | None
    ot_cost: torch.Tensor | None
    motion_weights: torch.Tensor
    selected_index: torch.Tensor
    selected_mask: torch.Tensor
    video_embedding: torch.Tensor
    text_embedding: torch.Tensor
    logit_scale: torch.Tensor
    text_ids: torch.Tensor
    text_mask: torch.Tensor
    prompt_classes: torch.Tensor | None = None


class GraceModel(nn.Module):
    """The GRACE classifier. forward(pixel_values, text) with text one string per clip (a refined description or a
    caption), or None for the class-prompt mode: the auxiliary head's top prompt_top_k classes pick the cached
    class prompts that are aligned with the clip.

    >>> import tempfile
    >>> from grace_fast.model.tiny import build_tiny_tokenizer, tiny_config
    >>> model = GraceModel(tiny_config(build_tiny_tokenizer(tempfile.mkdtemp())))
    >>> out = model(torch.randn(2, 16, 3, 32, 32), ["a man smiles", "a woman frowns"])
    >>> out.logits.shape, out.motion_weights.shape, out.selected_index.shape
    (torch.Size([2, 7]), torch.Size([2, 8, 4, 4]), torch.Size([2, 64]))
    """

    def __init__(self, config: GraceConfig, tokenizer=None, load_pretrained: bool = True):
        super().__init__()
        self.video = VideoEncoder(config, load_pretrained)
        self.text = TextEncoder(config, tokenizer, load_pretrained)
        # the checkpoint must describe the backbones actually built, whichever folder they came from
        self.config = config.replace(video=_diff_dict(self.video.model.config), text=_diff_dict(self.text.model.config))
        self.video_proj = nn.Linear(self.video.hidden_size, config.dim)
        self.text_proj = nn.Linear(self.text.hidden_size, config.dim)
        self.alignment = build_alignment(config)
        self.head = FusionHead(config)
        self.aux_head = AuxiliaryHead(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.temperature_init)))

    @property
    def tokenizer(self):
        return self.text.tokenizer

    def forward(self, pixel_values: torch.Tensor, text: Sequence[str] | None = None) -> GraceOutput:
        """pixel_values: [B, frames, 3, image_size, image_size] normalised frames; text: B strings or None."""
        config = self.config
        self.video.check(pixel_values)
        if text is not None and len(text) != pixel_values.shape[0]:
            raise ValueError(f"text has {len(text)} entries but pixel_values has batch size {pixel_values.shape[0]}")

        X = self.video(pixel_values)  # [B, T', H', W', D]
        X, w = self.motion(X)
        kept = ops.select_tokens(
            X,
            w,
            ratio=config.rho if config.motion != "off" else 1.0,
            mass=config.mass if config.motion != "off" else None,
            max_tokens=config.max_tokens,
        )
        V = self.video_proj(kept.tokens)  # [B, K, d]
        video = masked_mean(V, kept.mask)
        aux_logits = self.aux_head(video)

        prompt_classes = None
        if text is None:
            prompt_classes = aux_logits.topk(config.prompt_top_k, dim=1).indices  # [B, k]
            tokens = self.prompt_tokens(prompt_classes)
        else:
            tokens = self.text(text)
        U = self.text_proj(tokens.embeddings)  # [B, N, d]
        text_embedding = masked_mean(U, tokens.mask)

        aligned = self.alignment(U, tokens.mask, V, kept.mask, kept.weights)
        logits = self.head(video, aligned.pooled, text_embedding)
        return GraceOutput(
            logits=logits,
            aux_logits=aux_logits,
            plan=aligned.plan,
            ot_cost=aligned.cost,
            motion_weights=w,
            selected_index=kept.index,
            selected_mask=kept.mask,
            video_embedding=video,
            text_embedding=text_embedding,
            logit_scale=self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE),
            text_ids=tokens.ids,
            text_mask=tokens.mask,
            prompt_classes=prompt_classes,
        )

    def motion(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Motion-difference weighting (GRACE.md section 1): X [B, T', H', W', D] -> (X', w [B, T', H', W'])."""
        config = self.config
        if config.motion == "off":
            return X, X.new_ones(X.shape[:-1], dtype=torch.float32)
        return ops.motion_weights(
            X,
            mode=config.motion,
            alpha=config.motion_alpha,
            window=config.motion_window,
            temperature=config.motion_temperature,
            beta=config.motion_beta,
            backend=config.backend("motion_weights"),
        )

    def prompt_tokens(self, classes: torch.Tensor) -> TextTokens:
        """The class prompts of classes [B, k], each clip's k prompts concatenated -> TextTokens [B, k N, Dt]."""
        prompts = self.text.class_prompts()  # [num_classes, N, Dt]
        B, k = classes.shape
        return TextTokens(
            prompts.embeddings[classes].reshape(B, k * prompts.embeddings.shape[1], -1),
            prompts.mask[classes].reshape(B, -1),
            prompts.ids[classes].reshape(B, -1),
        )

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write config.json, model.safetensors and the tokenizer files to folder (each file atomically)."""
        from grace_fast.model.io import save_pretrained

        save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **overrides) -> "GraceModel":
        """Load a model written by save_pretrained; overrides change config fields (e.g. frames=64, alignment=...)."""
        from grace_fast.model.io import from_pretrained

        return from_pretrained(folder, **overrides)


def _diff_dict(config) -> dict:
    """A transformers config as the fields that differ from its class defaults (JSON-able, without versions)."""
    values = config.to_diff_dict()
    for key in ("transformers_version", "_name_or_path", "architectures", "model_type", "dtype", "torch_dtype"):
        values.pop(key, None)
    return values

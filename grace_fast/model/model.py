"""GraceModel: VideoMAE tokens -> motion weighting -> token selection; CLIP text tokens; projection to d;
alignment (semi-relaxed token-level OT by default) of the caption and of every class prompt; fusion and heads
(docs/method.md: the data flow and sections 1, 2, 4 and 5)."""

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from grace_fast import ops
from grace_fast.model.alignment import Aligned, NoAlignment, align_classes, build_alignment, masked_mean
from grace_fast.model.config import GraceConfig
from grace_fast.model.heads import MAX_LOGIT_SCALE, AuxiliaryHead, FusionHead
from grace_fast.model.io import load_checkpoint, save_checkpoint
from grace_fast.model.text import TextEncoder
from grace_fast.model.video import VideoEncoder


@dataclass
class GraceOutput:
    """What GraceModel returns for a batch of B clips (K kept visual tokens, N caption tokens, C classes whose prompts
    have Nc tokens, d = config.dim).

    logits: [B, C], the prediction: the main head's with a caption, the auxiliary head's without (class-prompt mode);
    aux_logits: [B, C] linear(pool(V')) + class_logits; class_logits: [B, C] s(V, U_c) / tau_cls (None with alignment
    "none" or without class prompts);
    caption: the caption aligned with its clip (None in class-prompt mode), an Aligned with v_txt [B, d],
    similarity [B] (s_ot for "ot"), plan [B, N, K] and mass [B, K] (q = plan^T 1; plan and mass None for "none");
    classes: every class prompt aligned with every clip (None when class_logits is), an Aligned with v_txt [B, C, d],
    similarity [B, C], plan [B, C, Nc, K] and mass [B, C, K];
    motion_weights: [B, T', H', W'] float32 (all 1 with motion "off");
    selected_index: [B, K] long, flat (t, h, w) index of each kept token; selected_mask: [B, K] bool;
    video_embedding: [B, d] pool(V'); text_embedding: [B, d] pool(U) (None in class-prompt mode): the InfoNCE pair;
    logit_scale: scalar, the learnable InfoNCE temperature 1 / tau;
    text_ids, text_mask: [B, N] the caption's token ids and content mask (None in class-prompt mode).
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor
    class_logits: torch.Tensor | None
    caption: Aligned | None
    classes: Aligned | None
    motion_weights: torch.Tensor
    selected_index: torch.Tensor
    selected_mask: torch.Tensor
    video_embedding: torch.Tensor
    text_embedding: torch.Tensor | None
    logit_scale: torch.Tensor
    text_ids: torch.Tensor | None
    text_mask: torch.Tensor | None


class GraceModel(nn.Module):
    """The GRACE classifier. forward(pixel_values, text) with text one string per clip (a refined description or a
    caption), or None for the class-prompt mode, where the auxiliary head, which scores every class by its own
    prompt, makes the prediction.

    >>> import tempfile
    >>> from grace_fast.model.tiny import build_tiny_tokenizer, tiny_config
    >>> model = GraceModel(tiny_config(build_tiny_tokenizer(tempfile.mkdtemp())))
    >>> out = model(torch.randn(2, 16, 3, 32, 32), ["a man smiles", "a woman frowns"])
    >>> out.logits.shape, out.caption.mass.shape, out.classes.plan.shape[:2]
    (torch.Size([2, 7]), torch.Size([2, 64]), torch.Size([2, 7]))
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
        if text is None and self.text.prompts is None:
            raise ValueError("no text given and the config has no class_prompts (the class-prompt mode needs them)")

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
        video = masked_mean(V, kept.mask)  # pool(V')
        classes = self.align_class_prompts(V, kept.mask, kept.weights)
        aux_logits, class_logits = self.aux_head(video, None if classes is None else classes.similarity)

        caption, tokens, text_embedding, logits = None, None, None, aux_logits  # class-prompt mode
        if text is not None:
            tokens = self.text(text)
            U = self.text_proj(tokens.embeddings)  # [B, N, d]
            text_embedding = masked_mean(U, tokens.mask)  # pool(U)
            caption = self.alignment(U.unsqueeze(1), tokens.mask.unsqueeze(1), V, kept.mask, kept.weights).first()
            logits = self.head(video, caption.v_txt, text_embedding, caption.similarity)
        return GraceOutput(
            logits=logits,
            aux_logits=aux_logits,
            class_logits=class_logits,
            caption=caption,
            classes=classes,
            motion_weights=w,
            selected_index=kept.index,
            selected_mask=kept.mask,
            video_embedding=video,
            text_embedding=text_embedding,
            logit_scale=self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE),
            text_ids=None if tokens is None else tokens.ids,
            text_mask=None if tokens is None else tokens.mask,
        )

    def align_class_prompts(self, V: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> Aligned | None:
        """Every class prompt aligned with every clip, B x C problems in one call (V [B, K, d], mask [B, K] bool and
        weights [B, K] of the kept tokens) -> Aligned over [B, C]; None without class prompts or for alignment
        "none"."""
        if self.text.prompts is None or isinstance(self.alignment, NoAlignment):
            return None
        prompts = self.text.class_prompts()  # [C, Nc, Dt]
        return align_classes(self.alignment, self.text_proj(prompts.embeddings), prompts.mask, V, mask, weights)

    def motion(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Motion-difference weighting (docs/method.md section 1): X [B, T', H', W', D] -> (X', w [B, T', H', W'])."""
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

    def save_pretrained(self, folder: str | os.PathLike, **options) -> None:
        """Write config.json, model.safetensors, the tokenizer files, preprocessor_config.json and README.md to
        folder (each file atomically); options: normalization, face_crop, data, metrics (model.io.save_checkpoint)."""
        save_checkpoint(self, folder, **options)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **overrides) -> "GraceModel":
        """Load a model written by save_pretrained; overrides change config fields (e.g. frames=64, alignment=...)."""
        return load_checkpoint(cls, folder, **overrides)


def _diff_dict(config) -> dict:
    """A transformers config as the fields that differ from its class defaults (JSON-able, without versions)."""
    values = config.to_diff_dict()
    for key in ("transformers_version", "_name_or_path", "architectures", "model_type", "dtype", "torch_dtype"):
        values.pop(key, None)
    return values

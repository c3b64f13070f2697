"""The visual encoder: VideoMAE patch tokens as a [B, T', H', W', D] grid (docs/method.md data flow)."""

import torch
from torch import nn

from grace_fast.model.config import GraceConfig, check_folder


class VideoEncoder(nn.Module):
    """transformers.VideoMAEModel built from config.video, or loaded from the local folder config.video_pretrained.

    VideoMAE's position table is sinusoidal, so any clip length works: the model is built for config.frames frames
    (a multiple of the tubelet size) and config.image_size pixels, whatever the checkpoint was trained with.
    """

    def __init__(self, config: GraceConfig, load_pretrained: bool = True):
        super().__init__()
        from transformers import VideoMAEConfig, VideoMAEModel

        sizes = {"num_frames": config.frames, "image_size": config.image_size}
        if load_pretrained and config.video_pretrained is not None:
            check_folder("video_pretrained", config.video_pretrained)
            self.model = VideoMAEModel.from_pretrained(config.video_pretrained, local_files_only=True, **sizes)
        else:
            self.model = VideoMAEModel(VideoMAEConfig(**{**config.video, **sizes}))
        video = self.model.config
        if config.frames % video.tubelet_size:
            raise ValueError(f"frames ({config.frames}) must be a multiple of the tubelet size ({video.tubelet_size})")
        if config.image_size % video.patch_size:
            raise ValueError(
                f"image_size ({config.image_size}) must be a multiple of the patch size ({video.patch_size})"
            )
        self.frames, self.image_size, self.channels = config.frames, config.image_size, video.num_channels
        self.grid = (config.frames // video.tubelet_size, *(2 * (config.image_size // video.patch_size,)))
        self.hidden_size = video.hidden_size
        if config.gradient_checkpointing:
            self.model.activation_checkpointing_enable({"use_reentrant": False})

    def check(self, pixel_values: torch.Tensor) -> None:
        """pixel_values must be [B, frames, channels, image_size, image_size]."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 5:
            got = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be [B, T, C, H, W], got {got}")
        _, T, C, H, W = pixel_values.shape
        if T != self.frames:
            raise ValueError(
                f"pixel_values has {T} frames but the model is built for frames={self.frames}; "
                f"sample {self.frames} frames or build the model with frames={T} "
                f"(e.g. GraceModel.from_pretrained(path, frames={T}))"
            )
        if (C, H, W) != (self.channels, self.image_size, self.image_size):
            raise ValueError(
                f"pixel_values frames must be [C, H, W] = [{self.channels}, {self.image_size}, {self.image_size}] "
                f"(image_size={self.image_size}), got [{C}, {H}, {W}]"
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: [B, T, C, H, W] -> tokens X: [B, T', H', W', D] (T' = T / tubelet, H' = H / patch)."""
        self.check(pixel_values)
        tokens = self.model(pixel_values=pixel_values).last_hidden_state  # [B, T' H' W', D] in (t, h, w) order
        return tokens.view(pixel_values.shape[0], *self.grid, self.hidden_size)

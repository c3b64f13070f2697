"""Data: video I/O shared by the text pipeline and training."""

from grace_fast.data.video import VideoReadError, list_videos, read_frames, uniform_indices, write_mp4

__all__ = ["VideoReadError", "list_videos", "read_frames", "uniform_indices", "write_mp4"]

"""Data: video I/O, the DFER data sets' annotation layouts, the synthetic set, and the Dataset that feeds the model."""

from grace_fast.data.datasets import BadClip, Batch, ClipDataset, Sample, collate
from grace_fast.data.face_crop import FaceCrop, FaceDetector, FaceTrack, HaarFaceDetector
from grace_fast.data.frames import read_clip
from grace_fast.data.layouts import Clip, ClipList, csv_clips, dfew, ferv39k, load_clips, mafw, synthetic
from grace_fast.data.segments import segment_indices
from grace_fast.data.synthetic import make_synthetic
from grace_fast.data.transforms import Normalization, VideoTransform
from grace_fast.data.video import VideoReadError, list_videos, read_video, uniform_indices, write_mp4

__all__ = [
    "BadClip",
    "Batch",
    "Clip",
    "ClipDataset",
    "ClipList",
    "FaceCrop",
    "FaceDetector",
    "FaceTrack",
    "HaarFaceDetector",
    "Normalization",
    "Sample",
    "VideoReadError",
    "VideoTransform",
    "collate",
    "csv_clips",
    "dfew",
    "ferv39k",
    "list_videos",
    "load_clips",
    "mafw",
    "make_synthetic",
    "read_clip",
    "read_video",
    "segment_indices",
    "synthetic",
    "uniform_indices",
    "write_mp4",
]

"""A small runtime to embed in a camera loop: exported model in, numpy frames in, numpy scores/maps out.

Imports neither torch nor the model code (``import wmoe.runtime`` stays light).
"""
from .frames import FrameError, check_frames, preprocess_frames
from .runtime import Result, Runtime

__all__ = ["Runtime", "Result", "FrameError", "check_frames", "preprocess_frames"]

"""A small runtime to embed in a camera loop: exported model in, numpy frames in, scores, maps and verdicts out.

Imports neither torch nor the model code (``import wmoe.runtime`` stays light). The model file's contract
(:mod:`wmoe.contract`) says how to preprocess and where to draw the line; ``wmoe-camera``
(:mod:`wmoe.runtime.camera`) is the ready-made loop and :func:`stream` its Python API (one
:class:`FrameResult` per frame), :mod:`wmoe.runtime.session` the ONNX Runtime session factory, and
:mod:`wmoe.runtime.registry` the one table of backends (ONNX Runtime, OpenVINO, TensorRT, and the torch backend for
training checkpoints, imported only when one is opened): ``Runtime.open`` picks from it by file and provider.
"""
from ..contract import Decision
from .frames import FrameError, check_frames, preprocess_frames
from .loop import LoopStats, ResultStream, stream
from .results import FrameResult
from .runtime import Result, Runtime

__all__ = ["Runtime", "Result", "Decision", "FrameError", "check_frames", "preprocess_frames", "stream",
           "ResultStream", "FrameResult", "LoopStats"]

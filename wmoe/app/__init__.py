"""``wmoe app``: a local web page to try a model — drop images, see the overlay, the verdict and the defect.

Standard library only on top of wmoe's runtime core: a ``ThreadingHTTPServer`` (:mod:`wmoe.app.server`) serves one
static page (``static/``) and a small JSON API over :class:`wmoe.app.service.AppService`, which scores through
:mod:`wmoe.app.scoring` (a checkpoint through the torch :class:`~wmoe.detector.Detector`, an exported ONNX / engine
through the torch-free :class:`~wmoe.runtime.Runtime`). Why not Gradio: docs/app.md.
"""
from .scoring import Scorer, open_scorer
from .service import AppService

__all__ = ["AppService", "Scorer", "open_scorer"]

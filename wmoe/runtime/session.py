"""The one ONNX Runtime session factory (used by export parity, the runtime, the bench and serving). No torch.

Providers by name: ``cpu``; ``cuda`` (CUDA EP, CPU behind it); ``tensorrt`` (TensorRT EP, then the CUDA EP for the
nodes TensorRT does not take, then CPU — ONNX Runtime's recommended registration). The TensorRT EP gets its options
from the model's contract (:class:`wmoe.contract.ModelMeta`): engine and timing caches on, under a folder the user
can set (``trt_cache_dir=`` or ``$WMOE_TRT_CACHE``, default ``~/.cache/wmoe/ort-trt``); fp16 when the model was
exported in fp16; one optimization profile covering the dynamic batch range.

A provider asked for that cannot be had — not installed (``onnxruntime`` instead of ``onnxruntime-gpu``), or
dropped by ONNX Runtime while creating the session (CUDA/cuDNN/TensorRT libraries or the GPU missing) — is a
:class:`wmoe.errors.ProviderUnavailableError` naming what is missing: a line PC configured for the GPU must not
quietly score on its CPU at a tenth of the frame rate. ``allow_cpu_fallback=True`` (``--allow-cpu-fallback``)
turns it into a :class:`RuntimeWarning` naming what runs instead. A plugin-flavor model (TensorRT plugin nodes) is refused with a message before ONNX Runtime parses it.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..contract import INPUT_FRAMES, ContractError, ModelMeta, wmoe_metadata
from ..onnx_meta import read_onnx_metadata
from ..errors import MissingDependencyError, ProviderUnavailableError

PROVIDERS: Dict[str, str] = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                             "tensorrt": "TensorrtExecutionProvider"}
#: ONNX Runtime's graph optimization levels by wmoe's name (``all`` = ONNX Runtime's default).
GRAPH_OPTIMIZATION: Dict[str, str] = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED",
                                      "basic": "ORT_ENABLE_BASIC", "disabled": "ORT_DISABLE_ALL"}
#: Default batch profile (min, opt, max) the TensorRT EP builds its engine for.
DEFAULT_TRT_BATCH: Tuple[int, int, int] = (1, 8, 32)
INSTALL_GPU = "pip install onnxruntime-gpu (CUDA/TensorRT providers; TensorRT itself: pip install tensorrt)"


def default_trt_cache_dir() -> Path:
    env = os.environ.get("WMOE_TRT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "wmoe" / "ort-trt"


def _profile_shapes(meta: ModelMeta, batch: Tuple[int, int, int]) -> Dict[str, str]:
    if meta.input == INPUT_FRAMES:
        h, w = meta.frame_size
        dims = f"x{h}x{w}x3"
    else:
        dims = f"x3x{meta.image_size}x{meta.image_size}"
    name = meta.input
    lo, opt, hi = batch
    return {"trt_profile_min_shapes": f"{name}:{lo}{dims}", "trt_profile_opt_shapes": f"{name}:{opt}{dims}",
            "trt_profile_max_shapes": f"{name}:{hi}{dims}"}


def tensorrt_options(meta: Optional[ModelMeta], cache_dir: Optional[Union[str, Path]] = None,
                     batch: Sequence[int] = DEFAULT_TRT_BATCH, fp16: Optional[bool] = None) -> Dict[str, str]:
    """TensorRT EP provider options for a wmoe model (option names as in ONNX Runtime's TensorRT EP docs)."""
    lo, opt, hi = (int(b) for b in batch)
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"TensorRT batch profile must satisfy 1 <= min <= opt <= max, got {tuple(batch)}")
    cache = Path(cache_dir) if cache_dir else default_trt_cache_dir()
    if fp16 is None:
        fp16 = meta is not None and meta.precision == "fp16"
    opts = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": "True" if fp16 else "False"}
    if meta is not None:
        opts.update(_profile_shapes(meta, (lo, opt, hi)))
    return opts


FALLBACK_HINT = "pass --allow-cpu-fallback (allow_cpu_fallback=True) to run on what is available instead"


def _unavailable(message: str, runs_on: str, allow_cpu_fallback: bool, stacklevel: int) -> None:
    if not allow_cpu_fallback:  # the error must not say it runs anywhere: it does not
        raise ProviderUnavailableError(f"{message}; {FALLBACK_HINT}")
    warnings.warn(f"{message}; running on {runs_on}", RuntimeWarning, stacklevel=stacklevel + 1)


def provider_chain(provider: str, available: Sequence[str], meta: Optional[ModelMeta] = None,
                   trt_cache_dir: Optional[Union[str, Path]] = None, trt_batch: Sequence[int] = DEFAULT_TRT_BATCH,
                   trt_fp16: Optional[bool] = None, allow_cpu_fallback: bool = False) -> List[Any]:
    """The ``providers=`` list for ``provider`` given the installed providers. A missing one raises
    :class:`ProviderUnavailableError` naming it, or with ``allow_cpu_fallback`` warns and leaves it out."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
    wanted: List[Any] = []
    if provider == "tensorrt":
        wanted.append((PROVIDERS["tensorrt"], tensorrt_options(meta, trt_cache_dir, trt_batch, trt_fp16)))
    if provider in ("tensorrt", "cuda"):
        wanted.append(PROVIDERS["cuda"])
    chain = [p for p in wanted if (p[0] if isinstance(p, tuple) else p) in available]
    if chain and isinstance(chain[0], tuple):  # the TensorRT EP will run: its cache folder must exist
        Path(chain[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    missing = [p[0] if isinstance(p, tuple) else p for p in wanted if p not in chain]
    chain.append(PROVIDERS["cpu"])
    if missing:
        runs_on = chain[0][0] if isinstance(chain[0], tuple) else chain[0]
        _unavailable(f"--provider {provider}: ONNX Runtime provider(s) {', '.join(missing)} not available (installed: "
                     f"{', '.join(available)}; {INSTALL_GPU})", runs_on, allow_cpu_fallback, 3)
    return chain


def make_session(path: Union[str, Path], provider: str = "cpu", threads: int = 0, *,
                 trt_cache_dir: Optional[Union[str, Path]] = None, trt_batch: Sequence[int] = DEFAULT_TRT_BATCH,
                 trt_fp16: Optional[bool] = None, allow_cpu_fallback: bool = False, optimization: str = "all"):
    """An ``onnxruntime.InferenceSession`` for the ONNX file at ``path`` on ``provider`` (see the module doc:
    a provider that cannot be had is an error unless ``allow_cpu_fallback``).

    ``threads``: intra-op threads (0: ONNX Runtime's default, one per physical core). ``optimization``: ONNX
    Runtime's graph optimization level (:data:`GRAPH_OPTIMIZATION`; ``all`` is its default and what the runtime
    ships, measured against the others by ``python -m wmoe.bench.ort_settings``). Raises :class:`wmoe.contract.ContractError` naming
    the file when it is missing, not ONNX, or a plugin-flavor wmoe model.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("onnxruntime", "runtime",
                                     "the ONNX runtime path (onnxruntime-gpu for CUDA/TensorRT)") from None
    raw = read_onnx_metadata(path)
    meta = ModelMeta.from_metadata(raw, str(path)) if wmoe_metadata(raw) else None
    if meta is not None and meta.flavor == "plugin":
        raise ContractError(f"{path} is the plugin flavor: its fused stages are TensorRT plugin nodes that ONNX "
                            f"Runtime cannot run. Build a TensorRT engine from it (wmoe export trt), or export the "
                            f"portable flavor for ONNX Runtime (wmoe export onnx --flavor portable)")
    chain = provider_chain(provider, ort.get_available_providers(), meta, trt_cache_dir, trt_batch, trt_fp16,
                           allow_cpu_fallback)
    if optimization not in GRAPH_OPTIMIZATION:
        raise ValueError(f"optimization must be one of {', '.join(GRAPH_OPTIMIZATION)}, got {optimization!r}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[optimization])
    if threads:
        opts.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=chain)
    # ONNX Runtime drops a registered provider it cannot load (missing CUDA/TensorRT libraries) with only a log line
    first = chain[0][0] if isinstance(chain[0], tuple) else chain[0]
    used = sess.get_providers()
    if first not in used:
        what = ("the TensorRT libraries (libnvinfer) or a GPU" if first == PROVIDERS["tensorrt"] else
                "the CUDA/cuDNN libraries of onnxruntime-gpu's CUDA version (libcudart, libcublas, libcudnn) or a "
                "GPU and its driver")
        _unavailable(f"--provider {provider}: ONNX Runtime could not start {first} for {path}: {what} missing "
                     f"(ONNX Runtime's log above names the library)", used[0], allow_cpu_fallback, 2)
    return sess


__all__ = ["PROVIDERS", "GRAPH_OPTIMIZATION", "DEFAULT_TRT_BATCH", "make_session", "provider_chain", "tensorrt_options",
           "default_trt_cache_dir"]

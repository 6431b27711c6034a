"""OpenVINO backend of the runtime: the same exported ONNX (frames input, stored decision) on a CPU, in f32, bf16 or
int8. numpy in, numpy out; no torch, no onnx (``pip install "wmoe[openvino]"``).

Precision is an explicit choice (:data:`wmoe.contract.CPU_PRECISIONS`):

- ``f32``: exact (the fp32 graph, ``INFERENCE_PRECISION_HINT=f32``; parity with ONNX Runtime ~1e-7);
- ``bf16``: the fp32 graph with OpenVINO's bf16 inference precision, where the CPU has bf16 (AVX512-BF16, AMX);
- ``int8``: the Q/DQ model written by ``wmoe export quantize`` (its quantized layers run int8 — VNNI/AMX where
  the CPU has them —, the layers it kept in high precision run f32).

Reduced precision runs only where the accuracy gate passed: ``precision="auto"`` (the default) takes the choice
stored in the model by ``wmoe export cpu-precision`` (:class:`wmoe.contract.CpuPrecision`: the fastest precision
that passed the gate on the user's images) and falls back — fastest passing first, f32 last — when this CPU or this
folder cannot run it. An explicit reduced precision the gate failed or never measured falls back to f32. Every
fallback is a :class:`RuntimeWarning` and :attr:`OpenVinoBackend.note` saying which precision runs and why; the
choice is never guessed at run time (``allow_ungated=True``, for the bench and the gate itself, runs what is asked).

The model is compiled once per backend and cached on disk (OpenVINO's ``CACHE_DIR``: ``cache_dir=``,
``$WMOE_OV_CACHE`` or ``~/.cache/wmoe/openvino``), so a restarted camera loop loads in seconds. The performance hint
follows the batch the loop runs: ``batch=1`` compiles for ``LATENCY`` (one stream over all cores), a larger batch for
``THROUGHPUT`` with the batch split over the streams OpenVINO chose, run as parallel infer requests.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..contract import (CPU_PRECISIONS, OUTPUT_NAMES, ContractError, CpuPrecision, ModelMeta, read_onnx_contract,
                        sha256_file)
from ..errors import MissingDependencyError
from ..onnx_meta import read_onnx_metadata

#: OpenVINO's names of the inference precision hint per wmoe CPU precision (int8: the rest of the Q/DQ graph).
_HINT = {"f32": "f32", "bf16": "bf16", "int8": "f32"}
#: The CPU capability (OpenVINO's ``OPTIMIZATION_CAPABILITIES``) each precision needs.
_CAPABILITY = {"f32": "FP32", "bf16": "BF16", "int8": "INT8"}


def default_cache_dir() -> Path:
    env = os.environ.get("WMOE_OV_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "wmoe" / "openvino"


def _core():
    try:
        import openvino as ov
    except ImportError:
        raise MissingDependencyError("openvino", "openvino", "the OpenVINO CPU backend (--provider openvino)") from None
    return ov, ov.Core()


def cpu_capabilities() -> Tuple[str, ...]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of this CPU (e.g. FP32, BF16, INT8) and its name."""
    _, core = _core()
    return tuple(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def cpu_name() -> str:
    _, core = _core()
    return str(core.get_property("CPU", "FULL_DEVICE_NAME"))


def resolve_precision(requested: str, meta: ModelMeta, path: Path, capabilities: Tuple[str, ...],
                      allow_ungated: bool = False) -> Tuple[str, Path, str]:
    """(precision, model file to compile, note) for ``requested`` (``auto`` or one of :data:`CPU_PRECISIONS`) on a
    CPU with ``capabilities``; the note says why the result differs from what was asked or stored ("" when not).

    The rules are the module's: reduced precision only where the stored gate passed (unless ``allow_ungated``),
    fallbacks fastest passing first and f32 last, each skipped candidate named with its reason."""
    if requested != "auto" and requested not in CPU_PRECISIONS:
        raise ValueError(f"precision must be auto or one of {', '.join(CPU_PRECISIONS)}, got {requested!r}")
    if meta.precision in ("int8", "fp8"):  # a Q/DQ file opened directly: it is what it is
        if meta.precision == "fp8":
            raise ContractError(f"{path}: an fp8 Q/DQ model; OpenVINO's CPU plugin runs int8 Q/DQ models only "
                                f"(quantize with --precision int8)")
        if "INT8" not in capabilities:
            return "int8", path, "this CPU reports no INT8 capability: the int8 layers run emulated (slow)"
        return "int8", path, ""
    if meta.precision != "fp32":
        raise ContractError(f"{path}: is {meta.precision}; the OpenVINO backend runs the fp32 export (bf16 and int8 "
                            f"are chosen here, see docs/runtime.md)")
    rec: Optional[CpuPrecision] = meta.cpu_precision
    skipped: List[str] = []

    def usable(p: str) -> Optional[Path]:
        """The file that runs precision ``p`` here, or None with the reason appended to ``skipped``."""
        if _CAPABILITY[p] not in capabilities:
            skipped.append(f"{p}: this CPU has no {_CAPABILITY[p]} (OpenVINO capabilities: {', '.join(capabilities)})")
            return None
        if p != "int8":
            return path
        if rec is None or not rec.int8_model:
            skipped.append("int8: no Q/DQ model recorded with this model (wmoe export quantize, then wmoe export "
                           "cpu-precision --qdq)")
            return None
        q = path.parent / rec.int8_model
        if not q.is_file():
            skipped.append(f"int8: the Q/DQ model {q} is missing")
            return None
        if rec.int8_sha256 and sha256_file(q) != rec.int8_sha256:
            skipped.append(f"int8: {q} is not the Q/DQ model the gate measured (SHA-256 differs)")
            return None
        return q

    if requested == "auto":
        if rec is None:
            return "f32", path, ("no CPU precision decision stored in the model (run wmoe export cpu-precision on "
                                 "your images to let bf16/int8 pass the accuracy gate): running f32")
        for p in rec.order():
            f = usable(p)
            if f is not None:
                why = "; ".join(skipped)
                return p, f, (f"stored choice {rec.choice} not usable here ({why}): running {p}" if why else "")
        return "f32", path, "; ".join(skipped) + ": running f32"
    if requested != "f32" and not allow_ungated:
        if rec is None or requested not in rec.candidates:
            return "f32", path, (f"{requested} was never measured by the accuracy gate for this model (run wmoe "
                                 f"export cpu-precision): running f32")
        if not rec.candidates[requested].get("passed"):
            fails = "; ".join(rec.candidates[requested].get("failures", [])) or "failed"
            return "f32", path, f"{requested} failed the accuracy gate ({fails}): running f32"
    f = usable(requested)
    if f is None:
        return "f32", path, "; ".join(skipped) + ": running f32"
    return requested, f, ""


class OpenVinoBackend:
    """The OpenVINO CPU backend (see the module doc): ``run(x)`` with the model's input (uint8 frames or float
    images, as its contract says) -> ``{"scores", "maps", "text_scores"}``."""

    def __init__(self, path: Union[str, Path], precision: str = "auto", batch: int = 1, threads: int = 0,
                 cache_dir: Optional[Union[str, Path]] = None, allow_ungated: bool = False,
                 hint: Optional[str] = None) -> None:
        path = Path(path)
        self.meta: ModelMeta = read_onnx_contract(path)  # refused when its graph contradicts its metadata
        if self.meta.flavor == "plugin":
            raise ContractError(f"{path} is the plugin flavor (TensorRT plugin nodes): export the portable flavor "
                                f"for OpenVINO (wmoe export onnx --flavor portable)")
        ov, core = _core()
        caps = tuple(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        self.precision, self.model_path, self.note = resolve_precision(precision, self.meta, path, caps,
                                                                       allow_ungated)
        # a fallback from what was asked or stored is warned; "no decision stored, f32" is only the note
        if self.note and (precision != "auto" or self.meta.cpu_precision is not None):
            warnings.warn(f"{path}: OpenVINO precision {self.precision}: {self.note}", RuntimeWarning, stacklevel=3)
        self.batch = max(1, int(batch))
        self.hint = hint or ("LATENCY" if self.batch == 1 else "THROUGHPUT")
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache)})
        cfg = {"PERFORMANCE_HINT": self.hint, "INFERENCE_PRECISION_HINT": _HINT[self.precision]}
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(str(self.model_path), "CPU", cfg)
        except RuntimeError as e:
            raise ContractError(f"{self.model_path}: OpenVINO cannot compile it ({str(e).strip().splitlines()[0]})"
                                ) from None
        self.streams = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if self.hint == \
            "THROUGHPUT" else 1
        self._requests = [self.compiled.create_infer_request() for _ in range(self.streams)]
        outs = [o.get_any_name() for o in self.compiled.outputs]
        missing = [n for n in OUTPUT_NAMES if n not in outs]
        if missing:
            raise ContractError(f"{self.model_path}: outputs {outs} lack {missing} (not a wmoe export?)")
        self._outs = {n: self.compiled.output(n) for n in OUTPUT_NAMES}
        self.description = (f"OpenVINO {ov.get_version().split('-')[0]} CPU, {self.precision}, {self.hint.lower()} "
                            f"hint ({self.streams} stream{'s' if self.streams > 1 else ''})")

    def _infer(self, req, x: np.ndarray) -> Dict[str, np.ndarray]:
        req.infer({0: x})
        return {n: np.array(req.get_tensor(o).data, copy=True) for n, o in self._outs.items()}

    def run(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        x = np.ascontiguousarray(x)
        k = min(self.streams, len(x))
        if k <= 1:
            return self._infer(self._requests[0], x)
        # THROUGHPUT: the batch split over the streams, the requests run in parallel (OpenVINO releases the GIL)
        parts = np.array_split(x, k)
        for req, part in zip(self._requests, parts):
            req.start_async({0: part})
        res: Dict[str, List[np.ndarray]] = {n: [] for n in OUTPUT_NAMES}
        for req in self._requests[:k]:
            req.wait()
            for n, o in self._outs.items():
                res[n].append(np.array(req.get_tensor(o).data, copy=True))
        return {n: np.concatenate(v) for n, v in res.items()}

    def close(self) -> None:
        """Release the infer requests, then the output ports, then the compiled model, in that order (they hold
        each other's native objects; a backend left to Python's garbage collector is torn down in any order)."""
        self._requests = []
        self._outs = {}
        self.compiled = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer (interpreter shutdown)
            pass


__all__ = ["OpenVinoBackend", "resolve_precision", "cpu_capabilities", "cpu_name", "default_cache_dir"]

"""The machine's dense matrix-multiply rate per precision, measured in the run with the fastest GEMM available.

The bench holds every backend to the roofline of its precision: ``fraction_of_matmul_rate`` = model FLOPs x images/s
/ this rate. The rate must be the machine's, not one library's: on a CPU PyTorch's fp32 GEMM reached half of what
ONNX Runtime and OpenVINO reach on the same cores, so a divisor taken from PyTorch printed fractions above 100%.
Every GEMM that can run here is timed on the same square problem and the fastest of each precision is the rate, with
the one that gave it named beside (``by``):

- CPU ``fp32``: PyTorch ``a @ b``, ONNX Runtime ``MatMul``, OpenVINO ``MatMul`` (f32 inference precision);
- CPU ``bf16``: PyTorch bf16 ``a @ b``, OpenVINO ``MatMul`` with the bf16 inference precision;
- CPU ``int8`` (integer ops/s): PyTorch ``torch._int_mm``, ONNX Runtime ``MatMulInteger`` (u8 x s8), OpenVINO
  ``FakeQuantize`` + ``MatMul`` (its int8 ``FullyConnected``);
- CUDA ``fp16`` (and ``fp32``): PyTorch ``a @ b``.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

#: The rate each backend's precision is held to (backends without an entry: fp32 on the CPU, fp16 on CUDA).
Rates = Dict[str, Dict[str, object]]  # precision -> {"flops_per_s", "by", "all": {gemm: flops_per_s}}


def _timed(fn: Callable[[], object], n: int, seconds: float, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        k += 1
    sync()
    return 2 * n ** 3 * k / (time.perf_counter() - t0)


def _torch_gemms(n: int) -> List[Tuple[str, str, Callable[[], object]]]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = [("fp32", "torch a @ b", lambda: a @ b)]
    ha, hb = a.bfloat16(), b.bfloat16()
    out.append(("bf16", "torch bf16 a @ b", lambda: ha @ hb))
    ia, ib = torch.randint(-128, 127, (n, n), dtype=torch.int8), torch.randint(-128, 127, (n, n), dtype=torch.int8)
    if hasattr(torch, "_int_mm"):
        out.append(("int8", "torch._int_mm", lambda: torch._int_mm(ia, ib)))
    return out


def _ort_gemms(n: int) -> List[Tuple[str, str, Callable[[], object]]]:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    out = []
    for prec, op, a_type, a, b in (
            ("fp32", "MatMul", TensorProto.FLOAT, rng.random((n, n), np.float32), rng.random((n, n), np.float32)),
            ("int8", "MatMulInteger", TensorProto.UINT8, rng.integers(0, 255, (n, n), dtype=np.uint8),
             rng.integers(-128, 127, (n, n), dtype=np.int8))):
        y_type = TensorProto.FLOAT if prec == "fp32" else TensorProto.INT32
        g = helper.make_graph([helper.make_node(op, ["A", "B"], ["C"])], "gemm",
                              [helper.make_tensor_value_info("A", a_type, [n, n])],
                              [helper.make_tensor_value_info("C", y_type, [n, n])], [numpy_helper.from_array(b, "B")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = min(m.ir_version, onnx.IR_VERSION)
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        out.append((prec, f"onnxruntime {op}", lambda s=s, a=a: s.run(None, {"A": a})))
    return out


def _openvino_gemms(n: int) -> List[Tuple[str, str, Callable[[], object]]]:
    import openvino as ov
    import openvino.opset13 as ops
    core = ov.Core()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32) * 2 - 1
    out = []
    for prec, hint in (("fp32", "f32"), ("bf16", "bf16"), ("int8", "f32")):
        if prec == "bf16" and "BF16" not in caps:
            continue
        x = ops.parameter([n, n], ov.Type.f32)
        lhs, rhs = x, ops.constant(b)
        if prec == "int8":  # FakeQuantize on both sides: OpenVINO's low-precision pass makes an int8 FullyConnected
            z, one, m1 = (ops.constant(np.float32(v)) for v in (0, 1, -1))
            lhs = ops.fake_quantize(x, z, one, z, one, 256)
            rhs = ops.fake_quantize(rhs, m1, one, m1, one, 255)
        c = core.compile_model(ov.Model([ops.matmul(lhs, rhs, False, False)], [x]), "CPU",
                               {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
        r = c.create_infer_request()
        out.append((prec, "openvino MatMul" + (" (FakeQuantize int8)" if prec == "int8" else
                                               f" ({hint} inference precision)"), lambda r=r, a=a: r.infer({0: a})))
    return out


def matmul_rates(seconds: float = 1.0) -> Rates:
    """The measured rate per precision (see the module doc): ``{precision: {"flops_per_s", "by", "all"}}``."""
    rates: Rates = {}
    if torch.cuda.is_available():
        n = 4096
        for prec, dt in (("fp16", torch.float16), ("fp32", torch.float32)):
            a, b = torch.randn(n, n, device="cuda", dtype=dt), torch.randn(n, n, device="cuda", dtype=dt)
            r = _timed(lambda: a @ b, n, seconds, torch.cuda.synchronize)
            rates[prec] = {"flops_per_s": r, "by": f"torch {prec} a @ b ({n}²)", "all": {"torch": r}}
        return rates
    n = 2048
    gemms: List[Tuple[str, str, Callable[[], object]]] = []
    errors: Dict[str, str] = {}
    for name, make in (("torch", _torch_gemms), ("onnxruntime", _ort_gemms), ("openvino", _openvino_gemms)):
        try:
            gemms += make(n)
        except Exception as e:  # noqa: BLE001 - a library missing or unable here is named in the results, not fatal
            errors[name] = f"{type(e).__name__}: {str(e)[:200]}"
    for prec, by, fn in gemms:
        try:
            r = _timed(fn, n, seconds / 2)
        except Exception as e:  # noqa: BLE001
            errors[by] = f"{type(e).__name__}: {str(e)[:200]}"
            continue
        d = rates.setdefault(prec, {"flops_per_s": 0.0, "by": "", "all": {}})
        d["all"][by] = r  # type: ignore[index]
        if r > d["flops_per_s"]:  # type: ignore[operator]
            d["flops_per_s"], d["by"] = r, f"{by} ({n}²)"
    if errors:
        rates["_errors"] = errors  # type: ignore[assignment]
    return rates


def rate_for(rates: Rates, precision: str) -> Tuple[float, str]:
    """(rate, what measured it) for a backend of ``precision``; the fp32 (CPU) / fp16 (CUDA) rate when that
    precision was not measured."""
    for p in (precision, "fp16" if torch.cuda.is_available() else "fp32"):
        d = rates.get(p)
        if d and d.get("flops_per_s"):
            return float(d["flops_per_s"]), f"{p}: {d['by']}"  # type: ignore[arg-type]
    return float("nan"), "not measured"

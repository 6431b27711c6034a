"""Small ``@triton.jit`` helpers shared by the kernels of :mod:`wmoe.kernels`."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _mma(a, b, FP32: tl.constexpr):
    """``a @ b`` on tensor cores in ``a``'s dtype with fp32 accumulation. fp32 operands use ``FP32`` as
    ``input_precision``: ``"ieee"`` (exact, FMA), ``"tf32"`` or ``"tf32x3"`` (tensor cores; see dispatch.Fp32)."""
    if a.dtype == tl.float32:
        return tl.dot(a, b.to(tl.float32), input_precision=FP32)
    return tl.dot(a, b.to(a.dtype))


def dtype_name(dtype) -> str:
    """``torch.float16`` -> ``"fp16"``: the dtype names of the specs, the AOT artifacts and the plugins."""
    return {"torch.float16": "fp16", "torch.float32": "fp32", "torch.bfloat16": "bf16"}[str(dtype)]

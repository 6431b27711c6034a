"""Small ``@triton.jit`` helpers shared by the kernels of :mod:`wmoe.kernels`."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _mma(a, b):
    """``a @ b`` on tensor cores in ``a``'s dtype with fp32 accumulation; fp32 stays exact (IEEE, no TF32)."""
    if a.dtype == tl.float32:
        return tl.dot(a, b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b.to(a.dtype))

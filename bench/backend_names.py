"""The bench's backend names, torch-free: the command line lists them without importing the model stack."""
from typing import Tuple

from wmoe.runtime.registry import providers

#: The named configurations (library, precision, provider) the bench knows by heart.
NAMED_BACKENDS = ("torch-fp32", "torch-fp16", "torch-bf16", "torch-compile", "torch-triton", "ort-cpu", "ort-cuda",
                  "ort-trt", "ort-qdq", "ov-cpu-f32", "ov-cpu-bf16", "ov-cpu-int8", "trt-engine", "aoti")
#: The runtime providers (wmoe.runtime.registry) the named configurations cover.
COVERED_PROVIDERS = ("cpu", "cuda", "tensorrt", "openvino")
RUNTIME_PREFIX = "runtime-"


def runtime_backends() -> Tuple[str, ...]:
    """``runtime-<provider>`` for every provider of the runtime's registry that no named configuration covers: a
    backend added to the registry is benchmarked on the exported ONNX without touching the bench."""
    return tuple(RUNTIME_PREFIX + p for p in providers(".onnx") if p not in COVERED_PROVIDERS)


ALL_BACKENDS = NAMED_BACKENDS + runtime_backends()
#: The precision of each backend's matrix multiplies: which measured matmul rate it is held to (bench/matmul.py);
#: the others: fp32 on the CPU, fp16 on CUDA.
MATMUL_PRECISION = {"torch-fp16": "fp16", "torch-bf16": "bf16", "torch-triton": "fp16", "ort-qdq": "int8",
                    "ov-cpu-bf16": "bf16", "ov-cpu-int8": "int8"}

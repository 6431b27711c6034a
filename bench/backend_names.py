"""The bench's backend names, torch-free: the command line lists them without importing the model stack."""

ALL_BACKENDS = ("torch-fp32", "torch-fp16", "torch-bf16", "torch-compile", "torch-triton", "ort-cpu", "ort-cuda",
                "ort-trt", "ort-qdq", "ov-cpu-f32", "ov-cpu-bf16", "ov-cpu-int8", "trt-engine", "aoti")
#: The precision of each backend's matrix multiplies: which measured matmul rate it is held to (bench/matmul.py);
#: the others: fp32 on the CPU, fp16 on CUDA.
MATMUL_PRECISION = {"torch-fp16": "fp16", "torch-bf16": "bf16", "torch-triton": "fp16", "ort-qdq": "int8",
                    "ov-cpu-bf16": "bf16", "ov-cpu-int8": "int8"}

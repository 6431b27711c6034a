"""The bench's backend names, torch-free: the command line lists them without importing the model stack."""

ALL_BACKENDS = ("torch-fp32", "torch-fp16", "torch-bf16", "torch-compile", "torch-triton", "ort-cpu", "ort-cuda",
                "ort-trt", "ort-qdq", "trt-engine", "aoti")

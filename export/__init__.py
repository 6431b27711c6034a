"""Export of a trained WMoE-CLIP: ONNX, ONNX Runtime, TensorRT engines and plugins (``wmoe.export``)."""

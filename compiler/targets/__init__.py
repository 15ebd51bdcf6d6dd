"""Deployment targets of a compiled QDQ model: ONNX Runtime on CPUs (``ort``) and TensorRT
engines (``trt``)."""

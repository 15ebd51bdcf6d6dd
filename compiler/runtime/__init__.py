"""Runtimes of a model directory: the ONNX Runtime and TensorRT decoders, greedy generation."""

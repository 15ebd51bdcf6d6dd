"""The ONNX Runtime target: ``smoothrot lower`` (our custom ops or MatMulNBits) and its report."""

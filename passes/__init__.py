"""smoothrot.passes: graph passes on onnx_ir models, one pass per module."""

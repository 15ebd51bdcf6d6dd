"""smoothrot.plugins: TensorRT plugins, their Triton kernels and numpy references."""

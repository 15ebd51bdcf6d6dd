"""Calibration: ONNX Runtime runs on calibration text, per-channel abs-max and Hessians ``XᵀX``
at every quantizable MatMul input, stored on disk and reused."""

"""BiSup tuning: a differentiable torch interpreter of the ONNX graph, the graph cut into decoder
blocks, and the block-wise reconstruction folded back into the graph's constants."""

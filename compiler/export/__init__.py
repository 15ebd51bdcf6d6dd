"""Export: a Hugging Face decoder traced by the torch dynamo exporter into one ONNX graph with a
flat KV cache."""

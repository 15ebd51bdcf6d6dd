"""Measurement: the built-in text, perplexity, logits probes, decode speed, the profiler and the
quantization-difficulty analysis."""

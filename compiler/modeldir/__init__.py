"""Model directories: where models come from (HF directory, GGUF, packaged), how smoothrot
writes one (graph, external data, tokenizer, manifest) and how outputs appear atomically."""

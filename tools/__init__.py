"""smoothrot.tools: the `smoothrot` command line, benchmarks and report helpers."""

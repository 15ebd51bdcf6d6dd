"""``smoothrot bench``: batch-1 greedy decoding speed of a model directory in ONNX Runtime (CPU).

One run = prefill of ``prompt_tokens`` then ``new_tokens`` greedy steps with the KV cache; the
numbers are medians over ``runs`` runs after one warm-up run. The prompt is seeded random token
ids: the work of a step does not depend on which tokens they are. Also reported: the process's
peak RSS (Python and ONNX Runtime included), the model's bytes on disk, and the weight bytes a
decoded token reads — every initializer, except that a table only ``Gather`` reads (the token
embedding) counts one row — which is what the roofline in ``tools/bench_speed.py`` divides by
the measured memory bandwidth.
"""

from __future__ import annotations

import resource
import statistics
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from smoothrot.compiler.config import BenchConfig
from smoothrot.compiler.measure.probes import model_bytes
from smoothrot.compiler.runtime.decoders import open_decoder
from smoothrot.core.manifest import load_manifest

__all__ = [
    "bench_dir",
    "decode_weight_bytes",
    "memory_bandwidth",
    "peak_rss_bytes",
]


def decode_weight_bytes(directory: Path) -> int:
    """Initializer bytes one decoded token reads (a Gather-only table counts one row)."""
    manifest = load_manifest(directory)
    model = onnx.load(str(Path(directory) / manifest.model_file), load_external_data=False)
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    total = 0
    for init in model.graph.initializer:
        size = int(np.prod(init.dims, dtype=np.int64))
        nbytes = _stored_bytes(init, size)
        if readers.get(init.name) == {"Gather"} and init.dims:
            nbytes //= int(init.dims[0])
        total += nbytes
    return total


def _stored_bytes(init: onnx.TensorProto, size: int) -> int:
    for entry in init.external_data:
        if entry.key == "length":
            return int(entry.value)
    if init.raw_data:
        return len(init.raw_data)
    bits = 4 if init.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) else 0
    if bits:
        return (size + 1) // 2
    return size * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize


def memory_bandwidth(megabytes: int = 256, threads: int = 2, repeats: int = 5) -> float:
    """Bytes/s of a large array copy (read + write counted, as STREAM's copy does): the best of
    ``repeats`` copies with 1 to ``threads`` threads."""
    n = megabytes * 2**20 // 8
    src, dst = np.ones(n), np.empty(n)

    def copy(lo: int, hi: int) -> None:
        np.copyto(dst[lo:hi], src[lo:hi])  # numpy releases the GIL for large copies

    best = 0.0
    for count in range(1, threads + 1):
        edges = np.linspace(0, n, count + 1).astype(int)
        for _ in range(repeats):
            workers = [
                threading.Thread(target=copy, args=(int(a), int(b)))
                for a, b in zip(edges[:-1], edges[1:], strict=True)
            ]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            best = max(best, 2 * src.nbytes / (time.perf_counter() - start))
    return best


def peak_rss_bytes() -> int:
    """This process's peak resident set. Linux's ``VmHWM`` belongs to the process image, whereas
    ``ru_maxrss`` survives fork+exec and would report a large parent's peak in a child."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _one_run(decoder, prompt: np.ndarray, new_tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    logits, past = decoder.forward(prompt)
    prefill = time.perf_counter() - start
    token = int(np.argmax(logits[0, -1]))
    start = time.perf_counter()
    for _ in range(new_tokens):
        logits, past = decoder.forward(np.array([[token]]), past)
        token = int(np.argmax(logits[0, -1]))
    return prefill, time.perf_counter() - start


def bench_dir(directory: Path, config: BenchConfig = BenchConfig()) -> dict[str, Any]:
    """Prefill and decode tokens/s (medians), peak RSS and sizes of one model directory."""
    start = time.perf_counter()
    decoder = open_decoder(directory, config.backend, config.threads, config.accuracy_level)
    load_seconds = time.perf_counter() - start
    vocab = decoder.manifest.dims.vocab
    rng = np.random.default_rng(config.seed)
    prompt = rng.integers(0, vocab, size=(1, config.prompt_tokens), dtype=np.int64)
    _one_run(decoder, prompt, min(config.new_tokens, 8))  # warm-up: allocations, thread pool
    prefill, decode = [], []
    for _ in range(config.runs):
        p, d = _one_run(decoder, prompt, config.new_tokens)
        prefill.append(config.prompt_tokens / p)
        decode.append(config.new_tokens / d)
    return {
        "model_dir": str(directory),
        "config": {**asdict(config), "backend": config.backend.value},
        "prefill_tokens_per_s": statistics.median(prefill),
        "decode_tokens_per_s": statistics.median(decode),
        "decode_runs": decode,
        "prefill_runs": prefill,
        "load_seconds": load_seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "model_bytes": model_bytes(Path(directory)),
        "decode_weight_bytes": decode_weight_bytes(Path(directory)),
    }

"""Benchmark: the factored online Hadamard (Reshape→MatMul(B)→MatMul(Aᵀ)→Reshape) vs one dense
n×n MatMul, in ONNX Runtime on the CPU it runs on, same run, median of repeats.

    python -m smoothrot.tools.bench_hadamard [--sizes 576 1536 4096] [--tokens 1 512]

``--docs FILE`` also writes the table as a Markdown page (with the run's environment, see
``bench_docs``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from smoothrot.core.hadamard import rotation_factors
from smoothrot.passes._graph import new_initializer
from smoothrot.tools.bench_docs import command_line, write_doc

__all__ = ["main"]


def _session(n: int, factored: bool) -> ort.InferenceSession:
    f = rotation_factors(n)
    x = ir.Value(name="x", shape=ir.Shape(["b", "s", n]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 21}, name="rot")
    if factored:
        m, p = f.a.shape[0], f.b.shape[0]
        split = new_initializer(graph, "split", np.array([0, 0, m, p], np.int64))
        merge = new_initializer(graph, "merge", np.array([0, 0, n], np.int64))
        b = new_initializer(graph, "b", f.b.astype(np.float32))
        at = new_initializer(graph, "at", np.ascontiguousarray(f.a.T).astype(np.float32))
        nodes = [ir.node("Reshape", [x, split])]
        nodes.append(ir.node("MatMul", [nodes[-1].outputs[0], b]))
        nodes.append(ir.node("MatMul", [at, nodes[-1].outputs[0]]))
        nodes.append(ir.node("Reshape", [nodes[-1].outputs[0], merge]))
    else:
        r = new_initializer(graph, "r", f.dense.astype(np.float32))
        nodes = [ir.node("MatMul", [x, r])]
    graph.extend(nodes)
    graph.outputs.append(nodes[-1].outputs[0])
    proto = ir.serde.serialize_model(ir.Model(graph, ir_version=10))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _median_us(session: ort.InferenceSession, x: np.ndarray, repeats: int) -> float:
    session.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[576, 1536, 4096])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 512])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--docs", type=Path, help="also write the table as this Markdown page")
    args = parser.parse_args(argv)
    lines = ["| n | factors | tokens | factored µs | dense n×n µs | dense / factored |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for line in lines:
        print(line)
    for n in args.sizes:
        f = rotation_factors(n)
        fac, dense = _session(n, True), _session(n, False)
        for tokens in args.tokens:
            x = np.random.default_rng(0).standard_normal((1, tokens, n)).astype(np.float32)
            a, b = _median_us(fac, x, args.repeats), _median_us(dense, x, args.repeats)
            kind = f"{f.a.shape[0]}x{f.b.shape[0]}" + ("" if f.hadamard else " (random A)")
            lines.append(f"| {n} | {kind} | {tokens} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
            print(lines[-1])
    if args.docs is not None:
        protocol = (
            "The factored online Hadamard (Reshape → MatMul(B) → MatMul(Aᵀ) → Reshape) against "
            "one dense n×n MatMul, in ONNX Runtime on the CPU, in one process; median of "
            f"{args.repeats} runs."
        )
        command = command_line("smoothrot.tools.bench_hadamard", argv)
        write_doc(args.docs, "Online Hadamard", command, protocol + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()

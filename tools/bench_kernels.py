"""GPU micro-benchmark of the plugin kernels against the memory-bandwidth roofline.

For each shape ``K×N`` (default 4096×4096 and the default model's MLP 576×1536) and each row count
``M`` (default 1, a decoded token; M > 4 runs the prefill kernels), group 128, fp16 activations
and output, it times W4A16 per-OC and
per-IC, W4A8 per-OC and per-IC, the online Hadamard rotation of ``x [M, K]`` and torch's fp16
matmul of the same shape. Each time is the median of many calls (``triton.testing.do_bench``,
which clears L2 before every call, so weights come from device memory as in a real decode step).

Bandwidth is measured in the same run: a 1 GiB device-to-device copy, bytes read + written over
its median time. A kernel's roofline fraction is ``bytes / time / bandwidth`` with ``bytes`` the
least it must move: packed weights + scales (+ activations and output). Each kernel's output is
also checked against the numpy reference (relative L2 error), for every ``--check-m`` row count
too (M > 4 runs the prefill kernels)::

    python -m smoothrot.tools.bench_kernels [--m 1 16 512] [--json] [--sweep]

Without CUDA it runs the kernels in Triton's interpreter (set ``TRITON_INTERPRET=1``) with
wall-clock times: a smoke test of this script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from smoothrot.core.hadamard import rotation_factors
from smoothrot.core.int4 import Grouping, fit_group_size, quantize_rtn
from smoothrot.plugins.gemm_config import DecodeConfig
from smoothrot.plugins.hadamard_kernel import hadamard_rotate
from smoothrot.plugins.int4_gemm import w4a16_gemm
from smoothrot.plugins.packing import pack_int4
from smoothrot.plugins.reference import kronecker_hadamard, w4a8_matmul, w4a16_matmul
from smoothrot.plugins.w4a8_gemm import w4a8_gemm

__all__ = ["KernelTiming", "main", "measure_bandwidth", "run", "table"]

GEMMS = {"w4a16": (w4a16_gemm, w4a16_matmul), "w4a8": (w4a8_gemm, w4a8_matmul)}
TOLERANCE = 2e-3  # relative L2 error: fp16 output rounding is ~3e-4, a wrong scale axis is ~1


@dataclass(frozen=True)
class KernelTiming:
    shape: str  # "KxN"
    m: int
    kernel: str
    median_us: float
    bytes: int
    roofline: float  # fraction of the measured copy bandwidth
    rel_error: float | None


def _time_ms(fn: Callable[[], object], device: torch.device, rep: int = 200) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median"))
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def measure_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read plus bytes written."""
    if device.type != "cuda":
        nbytes = 1 << 26
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * nbytes / (_time_ms(lambda: dst.copy_(src), device) * 1e-3)


def _rel_error(got: torch.Tensor, ref: np.ndarray) -> float:
    diff = got.float().cpu().numpy() - ref
    err = float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30))
    return err if np.isfinite(err) else float("inf")


@dataclass(frozen=True)
class Int4Weight:
    q: np.ndarray  # int8 [K, N] in [-8, 7] (the reference's operand)
    scale: np.ndarray
    group: int
    packed: torch.Tensor  # int8 [K, N/2] on the device (the kernels' operand)
    scale_t: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + self.scale_t.nbytes


@dataclass(frozen=True)
class Layer:
    k: int
    n: int
    weights: dict[Grouping, Int4Weight]
    w16: torch.Tensor  # the fp16 dense weight torch multiplies by

    @staticmethod
    def random(k: int, n: int, group: int, device: torch.device, seed: int = 0) -> Layer:
        b = (np.random.default_rng(seed).standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        weights = {}
        for grouping in Grouping:
            g = fit_group_size((k, n)[grouping.axis], group)
            qw = quantize_rtn(b, grouping, g)
            packed = torch.from_numpy(pack_int4(qw.q)).to(device)
            scale_t = torch.from_numpy(qw.scale).to(device)
            weights[grouping] = Int4Weight(qw.q, qw.scale, g, packed, scale_t)
        return Layer(k, n, weights, torch.from_numpy(b).to(device, torch.float16))


def check_gemms(layer: Layer, m: int, device: torch.device, seed: int = 1) -> dict[str, float]:
    """Relative error of every GEMM kernel vs the numpy reference on fresh random rows."""
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((m, layer.k)))
    x16 = x.to(device, torch.float16)
    x_ref = x16.float().cpu().numpy()
    errors = {}
    for name, (kernel, reference) in GEMMS.items():
        for grouping, w in layer.weights.items():
            got = kernel(x16, w.packed, w.scale_t, grouping, w.group)
            expected = reference(x_ref, w.q, w.scale, grouping, w.group)
            errors[f"{name} {grouping.value}"] = _rel_error(got, expected)
    return errors


def bench_shape(layer: Layer, m: int, bandwidth: float, device: torch.device) -> list[KernelTiming]:
    shape = f"{layer.k}x{layer.n}"
    x16 = torch.from_numpy(np.random.default_rng(2).standard_normal((m, layer.k))).to(
        device, torch.float16
    )
    io_bytes = 2 * m * (layer.k + layer.n)
    errors = check_gemms(layer, m, device)
    rows = []

    def add(kernel: str, fn: Callable[[], object], nbytes: int, error: float | None) -> None:
        us = _time_ms(fn, device) * 1e3
        rows.append(
            KernelTiming(shape, m, kernel, us, nbytes, nbytes / (us * 1e-6) / bandwidth, error)
        )

    for name, (kernel, _) in GEMMS.items():
        for grouping, w in layer.weights.items():
            label = f"{name} {grouping.value}"

            def call(kernel=kernel, w=w, grouping=grouping):
                return kernel(x16, w.packed, w.scale_t, grouping, w.group)

            add(label, call, w.nbytes + io_bytes, errors[label])
    add("torch fp16", lambda: x16 @ layer.w16, layer.w16.nbytes + io_bytes, None)
    f = rotation_factors(layer.k)
    a = torch.from_numpy(f.a.astype(np.float32)).to(device)
    b = torch.from_numpy(f.b.astype(np.float32)).to(device)
    rotated = hadamard_rotate(x16, a, b)
    ref = kronecker_hadamard(x16.float().cpu().numpy(), f.a, f.b)
    add(
        f"hadamard {f.a.shape[0]}x{f.b.shape[0]}",
        lambda: hadamard_rotate(x16, a, b),
        2 * x16.nbytes + a.nbytes + b.nbytes,
        _rel_error(rotated, ref),
    )
    return rows


SWEEP_TILES = ((64, 4, True), (128, 8, True), (32, 4, True), (128, 4, False))


def sweep(layer: Layer, m: int, device: torch.device) -> list[dict]:
    """Median µs of W4A16 decode configurations (tile, warps, split-K), per grouping."""
    x16 = torch.randn((m, layer.k), device=device, dtype=torch.float16)
    out = []
    for grouping, w in layer.weights.items():
        for block_n in (64, 128, 256):
            if grouping is Grouping.PER_IC and w.group % block_n:
                continue
            for block_k, warps, acc_2d in SWEEP_TILES:
                if grouping is Grouping.PER_OC and w.group % block_k:
                    continue
                for split_k in (4, 8, 16, 32):
                    cfg = DecodeConfig(block_k, block_n, split_k, warps, acc_2d=acc_2d)
                    layouts = {grouping.value: w.scale_t}
                    if grouping is Grouping.PER_IC:  # the same scales stored K-contiguous
                        layouts["per-ic k-major"] = w.scale_t.t().contiguous().t()
                    for name, scales in layouts.items():

                        def call(c=cfg, w=w, s=scales, gr=grouping):
                            return w4a16_gemm(x16, w.packed, s, gr, w.group, config=c)

                        us = 1e3 * _time_ms(call, device, rep=50)
                        out.append({"grouping": name, **asdict(cfg), "median_us": us})
    return out


def run(
    shapes: list[tuple[int, int]],
    ms: list[int],
    group: int,
    check_m: list[int],
    device: torch.device,
) -> tuple[float, list[KernelTiming], dict[str, dict[str, float]]]:
    bandwidth = measure_bandwidth(device)
    rows, checks = [], {}
    for k, n in shapes:
        layer = Layer.random(k, n, group, device)
        for m in ms:
            rows += bench_shape(layer, m, bandwidth, device)
        for rows_m in check_m:
            checks[f"{k}x{n} M={rows_m}"] = check_gemms(layer, rows_m, device, seed=rows_m)
    return bandwidth, rows, checks


def table(bandwidth: float, rows: list[KernelTiming], checks: dict[str, dict[str, float]]) -> str:
    lines = [
        f"copy bandwidth: {bandwidth / 1e9:.0f} GB/s (read + write)",
        "",
        "| shape | M | kernel | median µs | MB | % roofline | per-IC/per-OC | torch fp16 / this"
        " | rel. error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = {x.kernel: x for x in rows if x.shape == r.shape and x.m == r.m}
        name, _, grouping = r.kernel.partition(" ")
        ratio = ""
        if grouping == "per-ic" and f"{name} per-oc" in same:
            ratio = f"{r.median_us / same[f'{name} per-oc'].median_us:.2f}"
        vs_torch = f"{same['torch fp16'].median_us / r.median_us:.2f}"
        err = "" if r.rel_error is None else f"{r.rel_error:.1e}"
        lines.append(
            f"| {r.shape} | {r.m} | {r.kernel} | {r.median_us:.2f} | {r.bytes / 1e6:.2f} | "
            f"{100 * r.roofline:.0f} | {ratio} | {vs_torch} | {err} |"
        )
    bad = [f"{c} {k}: {e:.1e}" for c, errs in checks.items() for k, e in errs.items()]
    bad = [b for b, e in zip(bad, [e for v in checks.values() for e in v.values()], strict=True)
           if not e < TOLERANCE]  # fmt: skip
    lines += ["", f"checks vs reference (tolerance {TOLERANCE:g}): {len(bad)} failed"] + bad
    return "\n".join(lines)


def _shape(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 4096x4096, got {text!r}") from None
    return k, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=_shape, nargs="+", default=[(4096, 4096), (576, 1536)])
    parser.add_argument(
        "--m", type=int, nargs="+", default=[1], help="rows of X (1 = one decoded token)"
    )
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--check-m", type=int, nargs="*", default=[3, 64, 257])
    parser.add_argument("--sweep", action="store_true", help="also time decode tile configs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--json-file", help="also write the JSON here")
    parser.add_argument("--markdown-file", help="also write the table here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if min(args.m) < 1:
        parser.error("--m must be >= 1")
    bandwidth, rows, checks = run(args.shapes, args.m, args.group_size, args.check_m, device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "bandwidth_bytes_per_s": bandwidth,
        "rows": [asdict(r) for r in rows],
        "checks": checks,
    }
    if args.sweep:
        k, n = args.shapes[0]
        layer = Layer.random(k, n, args.group_size, device)
        result["sweep"] = sweep(layer, args.m[0], device)
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown_file:
        with open(args.markdown_file, "w") as f:
            f.write(table(bandwidth, rows, checks) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"device: {result['device']}")
        print(table(bandwidth, rows, checks))
        for grouping in ("per-oc", "per-ic", "per-ic k-major"):
            ranked = [s for s in result.get("sweep", []) if s["grouping"] == grouping]
            for s in sorted(ranked, key=lambda s: s["median_us"])[:8]:
                print(s)
    bad = [e for v in checks.values() for e in v.values() if not e < TOLERANCE]
    bad += [r.rel_error for r in rows if r.rel_error is not None and not r.rel_error < TOLERANCE]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

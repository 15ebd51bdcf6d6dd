"""One prepared command for a lent GPU: the plugin kernels checked and timed on real hardware.

Runs from the source tree alone (no install step, no transformers, no TensorRT)::

    python3 tools/gpu_check.py --out "$OUT"          # on a machine with CUDA, torch and Triton
    python3 tools/gpu_check.py --dry-run --out DIR   # anywhere: rehearses, measures nothing

Sections, each in its own subprocess with its own time limit, the results file rewritten after
each one (so a run cut off early still returns what it measured):

1. ``environment``: GPU name, compute capability, driver, Python, torch, CUDA and Triton versions,
   a hash of the kernel sources (a later session reruns this when they changed);
2. ``kernel_tests``: ``tests/plugins/test_kernels_gpu.py`` and ``test_kernels_interpret.py``
   (ragged tails, decode and prefill, W4A8, Hadamard) compiled on the GPU, against the numpy
   references, with ``--confcutdir tests/plugins`` so no model fixture is loaded;
3. ``bench_kernels``: ``tools/bench_kernels.py`` per shape (K×N = 14336×4096, 4096×4096,
   576×1536; M = 1, 16, 512; group 128; fp16 out), each with its own measured copy bandwidth;
4. ``targets``: W4A16 GEMV at M=1 ≥ 70 % of the copy bandwidth at 14336×4096, per-IC within 10 %
   of per-OC, faster than torch fp16 at M=1, each reported met or not met.

Writes ``gpu_check.json`` and ``gpu_check.md`` (commit the latter as ``docs/gpu.md``) and the
tests' ``kernel_tests.xml`` under ``--out``. ``smoothrot.*`` exists only through setuptools'
``package-dir`` mapping, so the script builds a temporary ``smoothrot/`` folder of symlinks from
``pyproject.toml``'s mapping and puts it first on the subprocesses' ``PYTHONPATH``.

Without CUDA (or torch, or Triton) it writes what it found, prints one line and exits 2.
``--dry-run`` runs every section in its cheapest form (tests collected, not run; the benchmark on
a tiny shape in Triton's CPU interpreter), to prove the command line, the imports and the files.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

__all__ = ["BENCH_SHAPES", "KERNEL_SOURCES", "KERNEL_TESTS", "evaluate_targets", "main"]

REPO = Path(__file__).resolve().parent.parent
KERNEL_TESTS = ("tests/plugins/test_kernels_gpu.py", "tests/plugins/test_kernels_interpret.py")
KERNEL_SOURCES = (
    "plugins/int4_gemm.py",
    "plugins/w4a8_gemm.py",
    "plugins/hadamard_kernel.py",
    "plugins/gemm_config.py",
)
BENCH_SHAPES = ("14336x4096", "4096x4096", "576x1536")
BENCH_M = ("1", "16", "512")
DRY_SHAPES, DRY_M = ("64x128",), ("1", "5")
TARGET_SHAPE, ROOFLINE_TARGET, PER_IC_SLACK = "14336x4096", 0.70, 1.10
EXIT_MISSING = 2

PROBE = """
import json, platform, subprocess
info = {"python": platform.python_version()}
import torch
info["torch"] = torch.__version__
info["cuda_build"] = torch.version.cuda
import triton
info["triton"] = triton.__version__
import smoothrot, smoothrot.plugins.int4_gemm, smoothrot.plugins.w4a8_gemm
import smoothrot.plugins.hadamard_kernel
info["smoothrot_path"] = list(smoothrot.__path__)
info["cuda"] = torch.cuda.is_available()
if info["cuda"]:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                memory_gib=round(p.total_memory / 2**30, 1))
    try:
        info["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
print("PROBE " + json.dumps(info))
"""


def kernel_sources_hash(repo: Path = REPO) -> str:
    digest = hashlib.sha256()
    for name in KERNEL_SOURCES:
        digest.update(name.encode() + b"\0" + (repo / name).read_bytes())
    return digest.hexdigest()[:16]


def package_shim(repo: Path, into: Path) -> Path:
    """``into/smoothrot/<sub>`` → the folders ``pyproject.toml`` maps; returns ``into``."""
    mapping = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    root = into / "smoothrot"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text('"""smoothrot, mapped from the source tree."""\n')
    for package, folder in mapping["package-dir"].items():
        parent, _, name = package.rpartition(".")
        if parent != "smoothrot":
            raise ValueError(f"package-dir entry {package!r} is not a smoothrot subpackage")
        (root / name).symlink_to(repo / folder, target_is_directory=True)
    return into


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> dict:
    start = time.monotonic()
    try:
        done = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(timeout, 1)
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout or ""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        return {"status": "timed out", "wall_s": round(time.monotonic() - start, 1), "tail": out}
    tail = (done.stdout + done.stderr)[-4000:]
    return {"rc": done.returncode, "wall_s": round(time.monotonic() - start, 1), "tail": tail}


def probe_environment(env: dict[str, str]) -> tuple[dict, str | None]:
    """(what the probe found, the one-line reason nothing can be measured or None)."""
    result = _run([sys.executable, "-c", PROBE], env, 120)
    lines = [x for x in result.get("tail", "").splitlines() if x.startswith("PROBE ")]
    if lines:
        info = json.loads(lines[-1][len("PROBE ") :])
        if not info["cuda"]:
            return info, (
                f"no CUDA device visible to PyTorch {info['torch']} (CUDA build "
                f"{info['cuda_build']}): nothing measured; --dry-run rehearses without a GPU"
            )
        return info, None
    last = (result.get("tail") or result.get("status", "")).strip().splitlines()
    reason = last[-1] if last else "the environment probe printed nothing"
    return {"probe_error": reason}, f"cannot import what the kernels need: {reason}"


def run_kernel_tests(env: dict[str, str], out: Path, dry: bool, timeout: float) -> dict:
    xml = out / "kernel_tests.xml"
    cmd = [sys.executable, "-m", "pytest", *KERNEL_TESTS, "-q", "-rs", "-p", "no:cacheprovider"]
    cmd += ["--confcutdir", "tests/plugins", f"--junitxml={xml}"]
    if dry:
        cmd.append("--collect-only")
    elif _has_module("xdist", env):
        cmd += ["-n", "4"]  # Triton compiles each configuration once: spread the compiles
    result = _run(cmd, env, timeout)
    if dry:
        n = sum(1 for x in result.get("tail", "").splitlines() if "::" in x)
        result["status"] = "collected" if result.get("rc") == 0 else "collection failed"
        return {**result, "collected": n}
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        cases = list(suite.iter("testcase"))
        failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
        skipped = [c for c in cases if c.find("skipped") is not None]
        result.update(
            passed=len(cases) - len(failed) - len(skipped),
            failed=len(failed),
            skipped=len(skipped),
            failures=[f"{c.get('classname')}::{c.get('name')}" for c in failed],
        )
    result.setdefault("status", "passed" if result.get("rc") == 0 else "failed")
    return result


def _has_module(name: str, env: dict[str, str]) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)"
    return subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def run_bench(env: dict[str, str], out: Path, dry: bool, deadline: float) -> dict:
    shapes, ms = (DRY_SHAPES, DRY_M) if dry else (BENCH_SHAPES, BENCH_M)
    section: dict = {"status": "passed", "ok": True, "runs": [], "rows": [], "tables": []}
    for shape in shapes:
        with tempfile.TemporaryDirectory() as tmp:
            json_file, md_file = Path(tmp) / "bench.json", Path(tmp) / "bench.md"
            cmd = [sys.executable, "-m", "smoothrot.tools.bench_kernels", "--shapes", shape]
            cmd += ["--m", *ms, "--group-size", "128", "--json-file", str(json_file)]
            cmd += ["--markdown-file", str(md_file)]
            if dry:
                cmd += ["--check-m", "3"]
            result = _run(cmd, env, deadline - time.monotonic())
            run = {"shape": shape, "wall_s": result["wall_s"], "rc": result.get("rc")}
            if json_file.is_file():
                data = json.loads(json_file.read_text())
                run["bandwidth_bytes_per_s"] = data["bandwidth_bytes_per_s"]
                run["checks"] = data["checks"]
                section["rows"] += data["rows"]
                section["tables"].append(md_file.read_text())
            else:
                run["tail"] = result.get("tail") or result.get("status")
            if result.get("rc") != 0:
                section["ok"] = False
                section["status"] = result.get("status") or f"failed (exit {result.get('rc')})"
            section["runs"].append(run)
        if time.monotonic() >= deadline:
            section["ok"], section["status"] = False, "timed out"
            break
    if dry:
        section["status"] = f"rehearsal in Triton's CPU interpreter ({section['status']})"
    return section


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """The issue's targets against M=1 rows: each met, not met, or not measured."""
    at = {(r["shape"], r["m"], r["kernel"]): r for r in rows}
    targets = []

    def add(name: str, value: float | None, threshold: str, met: bool | None) -> None:
        targets.append({"target": name, "value": value, "threshold": threshold, "met": met})

    for grouping in ("per-oc", "per-ic"):
        r = at.get((TARGET_SHAPE, 1, f"w4a16 {grouping}"))
        value = None if r is None else round(r["roofline"], 3)
        met = None if r is None else r["roofline"] >= ROOFLINE_TARGET
        add(f"w4a16 {grouping} M=1 {TARGET_SHAPE}: fraction of copy bandwidth", value,
            f">= {ROOFLINE_TARGET}", met)  # fmt: skip
    for shape in sorted({s for s, m, _ in at if m == 1}):
        for kernel in ("w4a16", "w4a8"):
            oc, ic = at.get((shape, 1, f"{kernel} per-oc")), at.get((shape, 1, f"{kernel} per-ic"))
            if oc and ic:
                ratio = ic["median_us"] / oc["median_us"]
                add(f"{kernel} M=1 {shape}: per-IC / per-OC time", round(ratio, 3),
                    f"<= {PER_IC_SLACK}", ratio <= PER_IC_SLACK)  # fmt: skip
        torch_row = at.get((shape, 1, "torch fp16"))
        for grouping in ("per-oc", "per-ic"):
            r = at.get((shape, 1, f"w4a16 {grouping}"))
            if r and torch_row:
                speedup = torch_row["median_us"] / r["median_us"]
                add(f"w4a16 {grouping} M=1 {shape}: torch fp16 time / ours", round(speedup, 3),
                    "> 1", speedup > 1)  # fmt: skip
    return targets


def markdown(result: dict) -> str:
    env, sections = result["environment"], result["sections"]
    title = "GPU verification of the plugin kernels"
    lines = [f"# {title}" + (" — DRY RUN, not a measurement" if result["dry_run"] else ""), ""]
    if result["dry_run"]:
        lines += ["Rehearsal of the command: tests collected, not run; benchmark times are", 
                  "Triton-interpreter wall clock on the CPU and mean nothing.", ""]  # fmt: skip
    lines += [
        f"- date: {result['date']}",
        f"- command: `{result['command']}`",
        f"- GPU: {env.get('gpu', 'none')} (compute capability {env.get('capability', '-')}, "
        f"{env.get('sms', '-')} SMs, {env.get('memory_gib', '-')} GiB), driver "
        f"{env.get('driver', '-')}",
        f"- Python {env.get('python', '-')}, torch {env.get('torch', '-')} (CUDA "
        f"{env.get('cuda_build', '-')}), Triton {env.get('triton', '-')}",
        f"- kernel sources hash: `{result['kernel_sources_hash']}` ({', '.join(KERNEL_SOURCES)})",
    ]
    if result.get("stopped"):
        lines += ["", f"**Stopped:** {result['stopped']}"]
    tests = sections.get("kernel_tests")
    if tests:
        lines += ["", "## Kernel tests vs the numpy references", "", f"status: {tests['status']}"
                  f" ({tests['wall_s']} s)"]  # fmt: skip
        if "passed" in tests:
            lines.append(f"passed {tests['passed']}, failed {tests['failed']}, skipped "
                         f"{tests['skipped']}")  # fmt: skip
            lines += [f"- failed: `{name}`" for name in tests["failures"]]
        if "collected" in tests:
            lines.append(f"collected {tests['collected']} tests")
    bench = sections.get("bench_kernels")
    if bench:
        lines += ["", "## Kernel timings (bench_kernels, group 128, fp16 out)", "",
                  f"status: {bench['status']}"]  # fmt: skip
        for run, table in zip(bench["runs"], bench["tables"], strict=False):
            lines += ["", f"### {run['shape']} ({run['wall_s']} s)", "", table.rstrip()]
    targets = sections.get("targets")
    if targets is not None:
        lines += ["", "## Targets", "", "| target | value | threshold | met |", "|---|---|---|---|"]
        for t in targets:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            value = "-" if t["value"] is None else t["value"]
            lines.append(f"| {t['target']} | {value} | {t['threshold']} | {met} |")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    for name, text in (
        ("gpu_check.json", json.dumps(result, indent=1)),
        ("gpu_check.md", markdown(result)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check"))
    parser.add_argument("--dry-run", action="store_true", help="rehearse; measure nothing")
    parser.add_argument("--budget-s", type=float, default=230, help="wall-clock limit in all")
    parser.add_argument("--tests-s", type=float, default=110, help="limit of the kernel tests")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    if args.out.exists() and not args.out.is_dir():
        print(f"gpu_check: --out {args.out} exists and is not a directory", file=sys.stderr)
        return EXIT_MISSING
    args.out.mkdir(parents=True, exist_ok=True)
    shim = package_shim(REPO, Path(tempfile.mkdtemp(prefix="smoothrot-shim-")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), str(REPO),
           os.environ.get("PYTHONPATH")]))}  # fmt: skip
    env.pop("TRITON_INTERPRET", None)
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"
    result = {
        "tool": "gpu_check",
        "version": 1,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python3", "tools/gpu_check.py", *(argv or sys.argv[1:])]),
        "dry_run": args.dry_run,
        "kernel_sources_hash": kernel_sources_hash(),
        "environment": {},
        "sections": {},
    }
    try:
        info, missing = probe_environment(env)
        result["environment"] = info
        if missing and not (args.dry_run and "probe_error" not in info):
            result["stopped"] = missing
            write(result, args.out)
            print(f"gpu_check: {missing}", file=sys.stderr)
            return EXIT_MISSING
        write(result, args.out)
        tests_s = min(args.tests_s, deadline - time.monotonic())
        result["sections"]["kernel_tests"] = run_kernel_tests(env, args.out, args.dry_run, tests_s)
        write(result, args.out)
        bench = run_bench(env, args.out, args.dry_run, deadline)
        result["sections"]["bench_kernels"] = bench
        write(result, args.out)
        # A rehearsal's interpreter times judge nothing: its targets all read "not measured".
        result["sections"]["targets"] = evaluate_targets([] if args.dry_run else bench["rows"])
        write(result, args.out)
    finally:
        shutil.rmtree(shim, ignore_errors=True)
    print(markdown(result))
    tests_ok = result["sections"]["kernel_tests"]["status"] in ("passed", "collected")
    return 0 if tests_ok and bench["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

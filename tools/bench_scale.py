"""Compile time and peak memory at real model sizes, on random Llama checkpoints.

Writes a random bf16 checkpoint of one shape (``random_checkpoint``: Llama-3.2-1B/3B,
Llama-3-8B, or ``tiny``), then runs ``smoothrot compile`` (w4a16, ``--no-eval``), ``smoothrot
lower`` and ``smoothrot bench`` on it, each in its own process, measuring wall time and that
process's peak RSS (``/usr/bin/time``, else ``/proc/PID/status`` VmHWM)::

    python -m smoothrot.tools.bench_scale --shape 1b --docs docs/scale.md

The shape's entry replaces its old one in ``scale.json`` beside the docs page; the page
(``scale.md``) and its plot (``scale.png``) are then rewritten from every entry.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from smoothrot.tools.bench_docs import command_line, cpu_model, git_commit, write_doc
from smoothrot.tools.cli_errors import OneLineParser
from smoothrot.tools.random_checkpoint import SHAPES, ScaleShape, write_random_checkpoint

__all__ = ["TARGETS", "dir_bytes", "main", "parse_args", "run", "run_measured", "write_docs"]

DISK_FACTOR = 3  # free disk needed up front, in bf16 checkpoints
TIME = Path("/usr/bin/time")
BENCH_FLAGS = ["--json", "--prompt-tokens", "16", "--new-tokens", "16", "--runs", "3"]
TARGETS = {"1b": (4.0, 12.0), "8b": (12.0, 90.0)}  # compile: peak RSS GiB, wall minutes
Measured = dict[str, Any]


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (0 where it does not exist)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _vmhwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_measured(argv: list[str], label: str, log_dir: Path) -> Measured:
    """Run ``argv`` (stderr passed through, stdout echoed and kept); wall s and peak RSS MiB."""
    timing = log_dir / f"{label}.time"
    full = [str(TIME), "-o", str(timing), "-f", "%M %e", *argv] if TIME.is_file() else argv
    print(f"[bench_scale] {label}: {shlex.join(argv)}", flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, text=True, bufsize=1)
    peak = [0]

    def poll() -> None:  # only without /usr/bin/time: the child's own high-water mark
        while proc.poll() is None:
            peak[0] = max(peak[0], _vmhwm_kb(proc.pid))
            time.sleep(0.5)

    if full is argv:
        threading.Thread(target=poll, daemon=True).start()
    tail: collections.deque[str] = collections.deque(maxlen=20)
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        tail.append(line.rstrip("\n"))
    rc = proc.wait()
    wall = time.monotonic() - start
    if full is not argv:
        try:
            peak[0] = int(timing.read_text().split("\n")[-2].split()[0])
        except (OSError, ValueError, IndexError):
            peak[0] = 0
    rss = round(peak[0] / 1024, 1) if peak[0] else None
    return {"argv": argv[1:], "rc": rc, "wall_s": round(wall, 2), "peak_rss_mb": rss,
            "tail": list(tail)}  # fmt: skip


def _bench_numbers(tail: list[str]) -> dict[str, Any]:
    """The decode/prefill speeds from ``smoothrot bench --json`` (its last line), if it parses."""
    try:
        r = json.loads(tail[-1])
    except (IndexError, ValueError):
        return {}
    keys = ("decode_tokens_per_s", "prefill_tokens_per_s", "peak_rss_bytes", "model_bytes")
    return {k: r[k] for k in keys if isinstance(r, dict) and k in r}


def _free_disk(path: Path) -> int:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _stages(report: Path) -> list[dict[str, Any]]:
    """The compile report's per-stage rows (none where it or its ``stages`` is absent)."""
    try:
        stages = json.loads(report.read_text()).get("stages", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [s for s in stages if isinstance(s, dict) and "stage" in s]


def _steps(shape_dir: Path, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    cli = [sys.executable, "-m", "smoothrot.tools.cli"]
    ckpt, out, low = shape_dir / "checkpoint", shape_dir / "compiled", shape_dir / "lowered"
    compile_argv = [*cli, "compile", "--model", str(ckpt), "--recipe", args.recipe, "--no-eval"]
    steps = [("compile", [*compile_argv, "-o", str(out), *shlex.split(args.extra_args)])]
    if not args.no_lower:
        steps.append(("lower", [*cli, "lower", str(out), "-o", str(low), "--no-eval"]))
        steps.append(("bench", [*cli, "bench", str(low), *BENCH_FLAGS]))
    return steps


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Generate, compile, lower and bench ``args.shape``; record it and rewrite the docs page."""
    shape: ScaleShape = SHAPES[args.shape]
    root = args.work or Path.cwd() / "out" / "scale-work"
    need, free = DISK_FACTOR * shape.bf16_bytes, _free_disk(root)
    if free < need:
        print(
            f"bench_scale: error: {root}: {free / 1e9:.1f} GB free, the {shape.name} shape needs "
            f"about {need / 1e9:.1f} GB ({DISK_FACTOR}x its bf16 checkpoint)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    root.mkdir(parents=True, exist_ok=True)
    work = root if args.work else Path(tempfile.mkdtemp(prefix=f"{shape.name}-", dir=root))
    shape_dir = work / shape.name
    shutil.rmtree(shape_dir, ignore_errors=True)  # a kept earlier run's: measure afresh
    entry: dict[str, Any] = {
        "shape": shape.name,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "command": command,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "params": shape.params,
        "recipe": args.recipe,
        "extra_args": args.extra_args,
        "commands": {},
        "stages": [],
        "disk_bytes": {},
    }
    try:
        print(f"[bench_scale] writing a random {shape.name} checkpoint to {shape_dir}", flush=True)
        start = time.monotonic()
        entry["checkpoint_bytes"] = write_random_checkpoint(shape_dir / "checkpoint", shape)
        entry["generate_s"] = round(time.monotonic() - start, 1)
        for label, argv in _steps(shape_dir, args):
            result = run_measured(argv, label, shape_dir)
            entry["commands"][label] = result
            if result["rc"]:
                break
        entry["stages"] = _stages(shape_dir / "compiled" / "report.json")
        # compile resets its VmHWM at every stage (its per-stage peaks), which also resets the
        # high-water mark getrusage reports at exit: its peak is the largest stage peak
        stage_peaks = [s["peak_rss_mb"] for s in entry["stages"] if s.get("peak_rss_mb")]
        if stage_peaks and "compile" in entry["commands"]:
            measured = entry["commands"]["compile"]
            measured["peak_rss_mb"] = max(measured["peak_rss_mb"] or 0.0, *stage_peaks)
        for name in ("compiled", "lowered"):
            if (shape_dir / name).is_dir():
                entry["disk_bytes"][name] = dir_bytes(shape_dir / name)
        if "bench" in entry["commands"]:
            entry["bench"] = _bench_numbers(entry["commands"]["bench"]["tail"])
    finally:
        if not args.keep:
            shutil.rmtree(work if not args.work else shape_dir, ignore_errors=True)
    write_docs(args.docs, entry, command)
    return entry


def _dur(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _cell(r: Measured | None, limits: tuple[float, float] | None = None) -> tuple[str, str]:
    """(wall, peak RSS) cells of one command, with the compile targets' pass/fail."""
    if r is None:
        return "—", "—"
    if r["rc"]:
        return f"FAILED (rc {r['rc']}) after {_dur(r['wall_s'])}", "—"
    wall, rss = r["wall_s"] / 60, (r["peak_rss_mb"] or float("nan")) / 1024
    cells = _dur(r["wall_s"]), f"{rss:.2f} GiB"
    if not limits:
        return cells
    verdict = {True: "pass", False: "FAIL"}
    return (
        f"{cells[0]} (≤ {limits[1]:g} min: {verdict[wall <= limits[1]]})",
        f"{cells[1]} (≤ {limits[0]:g} GiB: {verdict[rss <= limits[0]]})",
    )


def _page(entries: list[dict[str, Any]], plot: str) -> str:
    lines = [
        "Random bf16 Llama checkpoints at real shapes (`tools/random_checkpoint.py`), compiled "
        "by `smoothrot compile --no-eval`, then `smoothrot lower --no-eval` and `smoothrot bench "
        f"{' '.join(BENCH_FLAGS[1:])}`, each in its own process. Peak RSS is that process's "
        "(GiB = 2^30 bytes). Targets: "
        + "; ".join(f"{s} compile ≤ {r:g} GiB, ≤ {w:g} min" for s, (r, w) in TARGETS.items())
        + ". Each shape's own command, the child processes' last output lines and every number "
        "are in the JSON file beside this page.",
        "",
        "| shape | params | checkpoint GB | compile wall | compile peak RSS | lower wall "
        "| lower peak RSS | decode tok/s | written MB (compiled / lowered) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        cmds = e["commands"]
        wall, rss = _cell(cmds.get("compile"), TARGETS.get(e["shape"]))
        lwall, lrss = _cell(cmds.get("lower"))
        speed = e.get("bench", {}).get("decode_tokens_per_s")
        disk = " / ".join(f"{e['disk_bytes'].get(k, 0) / 1e6:.0f}" for k in ("compiled", "lowered"))
        lines.append(
            f"| {e['shape']} | {e['params'] / 1e9:.2f}B | {e.get('checkpoint_bytes', 0) / 1e9:.2f} "
            f"| {wall} | {rss} | {lwall} | {lrss} | {f'{speed:.2f}' if speed else '—'} | {disk} |"
        )
    lines += ["", "| shape | date | commit | CPU | cores | RAM GB | recipe | extra args |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for e in entries:
        ram = f"{e['ram_bytes'] / 1e9:.0f}" if e.get("ram_bytes") else "?"
        lines.append(
            f"| {e['shape']} | {e['date']} | `{e['commit']}` | {e['cpu']} | {e['cores']} | {ram} "
            f"| {e['recipe']} | {e['extra_args'] or '—'} |"
        )
    lines += ["", f"![compile wall time and peak RSS vs parameters]({plot})"]
    for e in entries:
        lines += ["", f"## {e['shape']}: compile stages", ""]
        if not e["stages"]:
            lines.append("(no `report.json` stages)")
            continue
        lines += ["| stage | seconds | peak RSS MiB |", "|---|---|---|"]
        for s in e["stages"]:
            rss = s.get("peak_rss_mb")
            lines.append(
                f"| {s['stage']} | {s.get('seconds', '')} | {'' if rss is None else rss} |"
            )
    return "\n".join(lines)


def _plot(entries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [e for e in entries if e["commands"].get("compile", {}).get("rc") == 0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, i, key, scale, label in (
        (axes[0], 1, "wall_s", 60, "compile wall time (min)"),
        (axes[1], 0, "peak_rss_mb", 1024, "compile peak RSS (GiB)"),
    ):
        x = [e["params"] / 1e9 for e in done]
        y = [(e["commands"]["compile"][key] or float("nan")) / scale for e in done]
        ax.plot(x, y, "o-", label="measured")
        for e, xi, yi in zip(done, x, y, strict=True):
            ax.annotate(e["shape"], (xi, yi), textcoords="offset points", xytext=(4, 4))
        goals = [(SHAPES[s].params / 1e9, t[i]) for s, t in TARGETS.items()]
        ax.plot(*zip(*goals, strict=True), "rv", label="target (at most)")
        ax.set_xscale("log")
        ax.set_xlabel("parameters (billions)")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_docs(docs: Path, entry: dict[str, Any], command: str) -> None:
    """Put ``entry`` into the ``.json`` beside ``docs`` (``docs/scale.md``: ``docs/scale.json``),
    replacing its shape's, then rewrite the page and its ``.png`` plot from every entry."""
    docs.parent.mkdir(parents=True, exist_ok=True)
    results, plot = docs.with_suffix(".json"), docs.with_suffix(".png")
    data = json.loads(results.read_text()) if results.is_file() else {}
    data[entry["shape"]] = entry
    results.write_text(json.dumps(data, indent=1) + "\n")
    entries = sorted(data.values(), key=lambda e: e["params"])
    _plot(entries, plot)
    write_doc(docs, "Compile at scale", command, _page(entries, plot.name))


def summary(entry: dict[str, Any], docs: Path) -> str:
    """One line: the shape, each command's wall time and peak RSS, decode speed, the page."""
    parts = [f"{entry['shape']} ({entry['params'] / 1e9:.2f}B params)"]
    for label, r in entry["commands"].items():
        rss = f"{r['peak_rss_mb'] / 1024:.2f} GiB" if r["peak_rss_mb"] else "? GiB"
        failed = f" FAILED rc {r['rc']}" if r["rc"] else ""
        parts.append(f"{label} {_dur(r['wall_s'])} {rss}{failed}")
    if entry.get("bench", {}).get("decode_tokens_per_s"):
        parts.append(f"decode {entry['bench']['decode_tokens_per_s']:.2f} tok/s")
    return "[bench_scale] " + ", ".join(parts) + f"; see {docs}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="bench_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", required=True, choices=list(SHAPES))
    parser.add_argument(
        "--work", type=Path, help="work directory (default: a new one under out/scale-work)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    parser.add_argument("--docs", type=Path, default=Path("docs/scale.md"), help="the page")
    parser.add_argument("--recipe", default="w4a16", help="the compile recipe")
    parser.add_argument("--extra-args", default="", help="more `smoothrot compile` flags")
    parser.add_argument("--no-lower", action="store_true", help="compile only: no lower, bench")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    entry = run(args, command_line("smoothrot.tools.bench_scale", argv))
    print(summary(entry, args.docs))
    if any(r["rc"] for r in entry["commands"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()

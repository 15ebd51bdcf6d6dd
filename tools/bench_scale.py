"""Time and peak memory of every command at real model sizes, on random Llama checkpoints.

Writes a random bf16 checkpoint of one shape (``random_checkpoint``: Llama-3.2-1B/3B,
Llama-3-8B, or ``tiny``), then runs on it, each in its own process, measuring wall time and
that process's peak RSS (``/usr/bin/time``, else ``/proc/PID/status`` VmHWM):

- ``compile`` (streamed, w4a16, ``--no-eval``), ``lower --no-eval``, then ``bench``, ``eval`` and
  ``generate`` of the lowered model, and ``build --no-eval`` (TensorRT-RTX) of the compiled one;
- with ``--steps …,exact``: the exactness of the streamed exact stage at this size, ``export``
  (the unstreamed fp32 model) against ``compile --recipe fp-rotate`` (streamed), logits compared
  on 128 tokens (the export holds the model in fp32: meant for the 1B and 3B shapes)::

    python -m smoothrot.tools.bench_scale --shape 1b --steps all

The shape's entry replaces its old one in ``scale.json`` beside the docs page; the page
(``scale.md``) and its plot (``scale.png``) are then rewritten from every entry
(:mod:`smoothrot.tools.scale_docs`).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothrot.tools.bench_docs import command_line, cpu_model, git_commit
from smoothrot.tools.cli_errors import OneLineParser
from smoothrot.tools.random_checkpoint import SHAPES, ScaleShape, write_random_checkpoint
from smoothrot.tools.scale_docs import outcome, summary, write_docs

__all__ = ["STEPS", "dir_bytes", "main", "parse_args", "run", "run_measured", "steps"]

DISK_FACTOR = 3  # free disk needed up front, in bf16 checkpoints (+2 with the fp32 export)
TIME = Path("/usr/bin/time")
BENCH_FLAGS = ["--json", "--prompt-tokens", "16", "--new-tokens", "16", "--runs", "3"]
EVAL_FLAGS = ["--json", "--seq", "128", "--windows", "2"]
PROMPT = "The Python assert statement is used to"
PROBE = (
    "import json, sys; from pathlib import Path; "
    "from smoothrot.compiler.measure.probes import logits_probe; "
    "print(json.dumps(logits_probe(Path(sys.argv[1]), Path(sys.argv[2]), decode_steps=32)))"
)
STEPS = ("compile", "lower", "bench", "eval", "generate", "build", "exact")
DEFAULT_STEPS = STEPS[:-1]
Measured = dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One measured command: its label, argv and the labels that must have succeeded first."""

    label: str
    argv: list[str]
    needs: tuple[str, ...] = ()


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


def _last_line(data: bytes) -> str:
    """The last non-empty line (a progress bar's ``\\r`` counts as a line end) of ``data``."""
    lines = data.decode("utf-8", "replace").replace("\r", "\n").splitlines()
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def run_measured(argv: list[str], label: str, log_dir: Path) -> Measured:
    """Run ``argv`` (stdout echoed and its last lines kept, stderr passed through and its last
    line kept as ``error``); its wall time (s), peak RSS (MiB) and exit status."""
    timing = log_dir / f"{label}.time"
    full = [str(TIME), "-o", str(timing), "-f", "%M %e", *argv] if TIME.is_file() else argv
    print(f"[bench_scale] {label}: {shlex.join(argv)}", flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None and proc.stderr is not None
    peak, err_tail = [0], bytearray()

    def poll() -> None:  # only without /usr/bin/time: the child's own high-water mark
        while proc.poll() is None:
            peak[0] = max(peak[0], _vmhwm_kb(proc.pid))
            time.sleep(0.5)

    def pass_stderr(stream: Any) -> None:  # progress bars stay bars: bytes, not lines
        while chunk := os.read(stream.fileno(), 65536):
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
            err_tail.extend(chunk)
            del err_tail[:-8192]

    if full is argv:
        threading.Thread(target=poll, daemon=True).start()
    errors = threading.Thread(target=pass_stderr, args=(proc.stderr,), daemon=True)
    errors.start()
    tail: collections.deque[str] = collections.deque(maxlen=20)
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace")
        print(line, end="", flush=True)
        tail.append(line.rstrip("\n"))
    rc = proc.wait()
    errors.join()
    wall = time.monotonic() - start
    if full is not argv:
        try:
            peak[0] = int(timing.read_text().split("\n")[-2].split()[0])
        except (OSError, ValueError, IndexError):
            peak[0] = 0
    rss = round(peak[0] / 1024, 1) if peak[0] else None
    return {"argv": argv[1:], "rc": rc, "wall_s": round(wall, 2), "peak_rss_mb": rss,
            "tail": list(tail), "error": _last_line(bytes(err_tail)) if rc else ""}  # fmt: skip


def _json_tail(r: Measured | None, keys: tuple[str, ...]) -> dict[str, Any]:
    """``keys`` of the JSON object a command printed last, if it printed one."""
    try:
        found = json.loads(r["tail"][-1]) if r and not r["rc"] else {}
    except (IndexError, ValueError):
        return {}
    return {k: found[k] for k in keys if isinstance(found, dict) and k in found}


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


def steps(shape_dir: Path, recipe: str, extra_args: str, chosen: tuple[str, ...]) -> list[Step]:
    """The commands of ``chosen`` (names from :data:`STEPS`) on ``shape_dir``'s checkpoint."""
    cli = [sys.executable, "-m", "smoothrot.tools.cli"]
    d = {name: str(shape_dir / name) for name in ("checkpoint", "compiled", "lowered")}
    d |= {name: str(shape_dir / name) for name in ("engine", "fp32", "exact")}
    every = {
        "compile": [
            Step(
                "compile",
                [
                    *cli,
                    "compile",
                    "--model",
                    d["checkpoint"],
                    "--recipe",
                    recipe,
                    "--no-eval",
                    "-o",
                    d["compiled"],
                    *shlex.split(extra_args),
                ],
            ),
        ],  # fmt: skip
        "lower": [
            Step(
                "lower",
                [*cli, "lower", d["compiled"], "-o", d["lowered"], "--no-eval"],
                ("compile",),
            ),
        ],  # fmt: skip
        "bench": [Step("bench", [*cli, "bench", d["lowered"], *BENCH_FLAGS], ("lower",))],
        "eval": [Step("eval", [*cli, "eval", d["lowered"], *EVAL_FLAGS], ("lower",))],
        "generate": [
            Step(
                "generate",
                [*cli, "generate", d["lowered"], "--prompt", PROMPT, "--max-new-tokens", "16"],
                ("lower",),
            ),
        ],  # fmt: skip
        "build": [
            Step(
                "build",
                [*cli, "build", d["compiled"], "-o", d["engine"], "--no-eval"],
                ("compile",),
            ),
        ],  # fmt: skip
        "exact": [
            Step("export", [*cli, "export", "--model", d["checkpoint"], "-o", d["fp32"]]),
            Step(
                "compile-exact",
                [
                    *cli,
                    "compile",
                    "--model",
                    d["checkpoint"],
                    "--recipe",
                    "fp-rotate",
                    "--stream",
                    "on",
                    "--no-eval",
                    "-o",
                    d["exact"],
                ],
            ),
            Step(
                "exact",
                [sys.executable, "-c", PROBE, d["fp32"], d["exact"]],
                ("export", "compile-exact"),
            ),
        ],  # fmt: skip
    }
    return [step for name in STEPS if name in chosen for step in every[name]]


def _entry(shape: ScaleShape, args: argparse.Namespace, command: str) -> dict[str, Any]:
    return {
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


def _measure(shape: ScaleShape, shape_dir: Path, args: argparse.Namespace, entry: dict) -> None:
    print(f"[bench_scale] writing a random {shape.name} checkpoint to {shape_dir}", flush=True)
    start = time.monotonic()
    entry["checkpoint_bytes"] = write_random_checkpoint(shape_dir / "checkpoint", shape)
    entry["generate_s"] = round(time.monotonic() - start, 1)
    cmds = entry["commands"]
    for step in steps(shape_dir, args.recipe, args.extra_args, args.steps):
        if all(need in cmds and not cmds[need]["rc"] for need in step.needs):
            cmds[step.label] = run_measured(step.argv, step.label, shape_dir)
    entry["stages"] = _stages(shape_dir / "compiled" / "report.json")
    # compile resets its VmHWM at every stage (its per-stage peaks), which also resets the
    # high-water mark getrusage reports at exit: its peak is the largest stage peak
    stage_peaks = [s["peak_rss_mb"] for s in entry["stages"] if s.get("peak_rss_mb")]
    if stage_peaks and "compile" in cmds:
        cmds["compile"]["peak_rss_mb"] = max(cmds["compile"]["peak_rss_mb"] or 0.0, *stage_peaks)
    for name in ("compiled", "lowered", "engine"):
        if (shape_dir / name).is_dir():
            entry["disk_bytes"][name] = dir_bytes(shape_dir / name)
    keys = ("decode_tokens_per_s", "prefill_tokens_per_s", "peak_rss_bytes", "model_bytes")
    entry["bench"] = _json_tail(cmds.get("bench"), keys)
    entry["eval"] = _json_tail(cmds.get("eval"), ("ppl", "tokens", "windows", "seq"))
    keys = (
        "tokens",
        "max_abs_logit_diff",
        "max_abs_logit",
        "logit_snr_db",
        "top1_agreement",
        "decode_steps",
    )
    entry["exact"] = _json_tail(cmds.get("exact"), keys)


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Generate ``args.shape``, run ``args.steps`` on it; record it and rewrite the docs page."""
    shape: ScaleShape = SHAPES[args.shape]
    root = args.work or Path.cwd() / "out" / "scale-work"
    factor = DISK_FACTOR + (2 if "exact" in args.steps else 0)
    need, free = factor * shape.bf16_bytes, _free_disk(root)
    if free < need:
        print(
            f"bench_scale: error: {root}: {free / 1e9:.1f} GB free, the {shape.name} shape needs "
            f"about {need / 1e9:.1f} GB ({factor}x its bf16 checkpoint)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    root.mkdir(parents=True, exist_ok=True)
    work = root if args.work else Path(tempfile.mkdtemp(prefix=f"{shape.name}-", dir=root))
    shape_dir = work / shape.name
    shutil.rmtree(shape_dir, ignore_errors=True)  # a kept earlier run's: measure afresh
    entry = _entry(shape, args, command)
    try:
        _measure(shape, shape_dir, args, entry)
    finally:
        if not args.keep:
            shutil.rmtree(work if not args.work else shape_dir, ignore_errors=True)
    write_docs(args.docs, entry, command, BENCH_FLAGS[1:])
    return entry


def _step_names(text: str) -> tuple[str, ...]:
    names = tuple(DEFAULT_STEPS) if text == "default" else tuple(text.split(","))
    names = STEPS if text == "all" else names
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step {unknown[0]!r} (of {', '.join(STEPS)})")
    missing = {"lower": "compile", "bench": "lower", "eval": "lower", "generate": "lower",
               "build": "compile"}  # fmt: skip
    for name in names:
        if name in missing and missing[name] not in names:
            raise argparse.ArgumentTypeError(f"step {name!r} needs {missing[name]!r}")
    return names


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
    parser.add_argument(
        "--steps",
        type=_step_names,
        default=DEFAULT_STEPS,
        help=f"comma-separated, of {', '.join(STEPS)}; 'default' (all but exact) or 'all'",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    entry = run(args, command_line("smoothrot.tools.bench_scale", argv))
    print(summary(entry, args.docs))
    # refusing up front (one line, a memory estimate) is a command's answer to a model too large
    if any(r["rc"] and not outcome(r).startswith("refused") for r in entry["commands"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()

"""``docs/scale.md`` from ``bench_scale``'s measurements: one entry per model shape, kept in the
``.json`` beside the page, the page and its plot rewritten from every entry.

Each entry holds the commands that ran on the shape (``compile``, ``lower``, ``bench``, ``eval``,
``generate``, ``build``, and for the exactness check ``export``, ``compile-exact``, ``exact``),
each with its wall time, peak RSS, exit status and last error line; a command refused up front
(exit 2 with a ``needs ~N GB`` line) is shown as refused, not as failed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smoothrot.tools.bench_docs import write_doc
from smoothrot.tools.random_checkpoint import SHAPES

__all__ = ["EXACT_TOLERANCE", "TARGETS", "outcome", "summary", "write_docs"]

TARGETS = {"1b": (4.0, 12.0), "8b": (12.0, 90.0)}  # compile: peak RSS GiB, wall minutes
EXACT_TOLERANCE = 1e-3  # max |Δ logits| of the streamed exact stage vs the fp32 export
Measured = dict[str, Any]


def _dur(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def outcome(r: Measured) -> str:
    """``ok``, ``refused up front: …`` (exit 2 with a memory estimate) or ``FAILED (rc N): …``."""
    if not r["rc"]:
        return "ok"
    error = r.get("error") or ""
    if r["rc"] == 2 and "needs ~" in error:
        return f"refused up front: {error}"
    return f"FAILED (rc {r['rc']})" + (f": {error}" if error else "")


def _cell(r: Measured | None, limits: tuple[float, float] | None = None) -> tuple[str, str]:
    """(wall, peak RSS) cells of one command, with the compile targets' pass/fail."""
    if r is None:
        return "—", "—"
    if r["rc"]:
        return f"{outcome(r).split(':')[0]} after {_dur(r['wall_s'])}", "—"
    wall, rss = r["wall_s"] / 60, (r["peak_rss_mb"] or float("nan")) / 1024
    cells = _dur(r["wall_s"]), f"{rss:.2f} GiB"
    if not limits:
        return cells
    verdict = {True: "pass", False: "FAIL"}
    return (
        f"{cells[0]} (≤ {limits[1]:g} min: {verdict[wall <= limits[1]]})",
        f"{cells[1]} (≤ {limits[0]:g} GiB: {verdict[rss <= limits[0]]})",
    )


def _exact_cell(e: dict[str, Any]) -> str:
    exact = e.get("exact")
    if not exact:
        return "—"
    diff = exact["max_abs_logit_diff"]
    verdict = "pass" if diff <= EXACT_TOLERANCE else "FAIL"
    return f"{diff:.2e} (≤ {EXACT_TOLERANCE:g}: {verdict})"


def _summary_rows(entries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| shape | params | checkpoint GB | compile wall | compile peak RSS | lower peak RSS "
        "| decode tok/s | exact stage max \\|Δ logits\\| | written MB (compiled / lowered) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        cmds = e["commands"]
        wall, rss = _cell(cmds.get("compile"), TARGETS.get(e["shape"]))
        lrss = _cell(cmds.get("lower"))[1]
        speed = e.get("bench", {}).get("decode_tokens_per_s")
        disk = " / ".join(f"{e['disk_bytes'].get(k, 0) / 1e6:.0f}" for k in ("compiled", "lowered"))
        lines.append(
            f"| {e['shape']} | {e['params'] / 1e9:.2f}B | {e.get('checkpoint_bytes', 0) / 1e9:.2f} "
            f"| {wall} | {rss} | {lrss} | {f'{speed:.2f}' if speed else '—'} | {_exact_cell(e)} "
            f"| {disk} |"
        )
    return lines


def _shape_section(e: dict[str, Any]) -> list[str]:
    lines = ["", f"## {e['shape']}", "", "| command | wall | peak RSS | outcome |"]
    lines.append("|---|---|---|---|")
    for label, r in e["commands"].items():
        wall, rss = _cell(r)
        if r["rc"]:
            wall = _dur(r["wall_s"])
        lines.append(f"| `{label}` | {wall} | {rss} | {outcome(r).replace('|', '/')} |")
    if e.get("exact"):
        x = e["exact"]
        lines += [
            "",
            f"Exact stage (`fp-rotate`, streamed) vs the fp32 export on {x['tokens']} tokens "
            f"({x['decode_steps']} decoded with the KV cache): max |Δ logits| "
            f"{x['max_abs_logit_diff']:.2e} against logits up to {x.get('max_abs_logit', 0):.2f}, "
            f"SNR {x['logit_snr_db']:.1f} dB, top-1 agreement {x['top1_agreement']:.3f}.",
        ]
    lines += ["", "Compile stages:", ""]
    if not e["stages"]:
        return [*lines, "(no `report.json` stages)"]
    lines += ["| stage | seconds | peak RSS MiB |", "|---|---|---|"]
    for s in e["stages"]:
        rss = s.get("peak_rss_mb")
        lines.append(f"| {s['stage']} | {s.get('seconds', '')} | {'' if rss is None else rss} |")
    return lines


def _page(entries: list[dict[str, Any]], plot: str, bench_flags: list[str]) -> str:
    lines = [
        "Random bf16 Llama checkpoints at real shapes (`tools/random_checkpoint.py`), compiled "
        "by `smoothrot compile --no-eval` (streamed), then `smoothrot lower --no-eval`, "
        f"`smoothrot bench {' '.join(bench_flags)}`, `eval` and `generate` of the lowered model "
        "and `smoothrot build --no-eval` (TensorRT-RTX) of the compiled one, each in its own "
        "process. Peak RSS is that process's (GiB = 2^30 bytes). Targets: "
        + "; ".join(f"{s} compile ≤ {r:g} GiB, ≤ {w:g} min" for s, (r, w) in TARGETS.items())
        + f"; the exact stage within {EXACT_TOLERANCE:g} of the fp32 export's logits. The "
        "weights are random: perplexities and generated text mean nothing, times and memory do. "
        "Each shape's commands, their last output lines and every number are in the JSON file "
        "beside this page.",
        "",
        *_summary_rows(entries),
        "",
        "| shape | date | commit | CPU | cores | RAM GB | recipe | extra args |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        ram = f"{e['ram_bytes'] / 1e9:.0f}" if e.get("ram_bytes") else "?"
        lines.append(
            f"| {e['shape']} | {e['date']} | `{e['commit']}` | {e['cpu']} | {e['cores']} | {ram} "
            f"| {e['recipe']} | {e['extra_args'] or '—'} |"
        )
    lines += ["", f"![wall time and peak RSS vs parameters]({plot})"]
    for e in entries:
        lines += _shape_section(e)
    return "\n".join(lines)


def _plot(entries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, i, key, scale, label in (
        (axes[0], 1, "wall_s", 60, "wall time (min)"),
        (axes[1], 0, "peak_rss_mb", 1024, "peak RSS (GiB)"),
    ):
        for command, style in (("compile", "o-"), ("lower", "s--")):
            done = [e for e in entries if e["commands"].get(command, {}).get("rc") == 0]
            x = [e["params"] / 1e9 for e in done]
            y = [(e["commands"][command][key] or float("nan")) / scale for e in done]
            ax.plot(x, y, style, label=command)
            for e, xi, yi in zip(done, x, y, strict=True):
                ax.annotate(e["shape"], (xi, yi), textcoords="offset points", xytext=(4, 4))
        goals = [(round(SHAPES[s].params / 1e9, 2), t[i]) for s, t in TARGETS.items()]
        ax.plot(*zip(*goals, strict=True), "rv", label="compile target (at most)")
        ax.set_xscale("log")
        ticks = sorted({round(e["params"] / 1e9, 2) for e in entries} | {g[0] for g in goals})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("parameters (billions)")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_docs(docs: Path, entry: dict[str, Any], command: str, bench_flags: list[str]) -> None:
    """Put ``entry`` into the ``.json`` beside ``docs`` (``docs/scale.md``: ``docs/scale.json``),
    replacing its shape's, then rewrite the page and its ``.png`` plot from every entry."""
    docs.parent.mkdir(parents=True, exist_ok=True)
    results, plot = docs.with_suffix(".json"), docs.with_suffix(".png")
    data = json.loads(results.read_text()) if results.is_file() else {}
    data[entry["shape"]] = entry
    results.write_text(json.dumps(data, indent=1) + "\n")
    entries = sorted(data.values(), key=lambda e: e["params"])
    _plot(entries, plot)
    write_doc(docs, "Compile at scale", command, _page(entries, plot.name, bench_flags))


def summary(entry: dict[str, Any], docs: Path) -> str:
    """One line: the shape, each command's wall time, peak RSS and outcome, decode speed."""
    parts = [f"{entry['shape']} ({entry['params'] / 1e9:.2f}B params)"]
    for label, r in entry["commands"].items():
        rss = f"{r['peak_rss_mb'] / 1024:.2f} GiB" if r["peak_rss_mb"] else "? GiB"
        status = "" if not r["rc"] else f" {outcome(r)}"
        parts.append(f"{label} {_dur(r['wall_s'])} {rss}{status}")
    if entry.get("bench", {}).get("decode_tokens_per_s"):
        parts.append(f"decode {entry['bench']['decode_tokens_per_s']:.2f} tok/s")
    if entry.get("exact"):
        parts.append(f"exact stage max |Δ logits| {entry['exact']['max_abs_logit_diff']:.2e}")
    return "[bench_scale] " + ", ".join(parts) + f"; see {docs}"

"""The report files of ``smoothrot analyze``: ``analysis.csv``, ``summary.md`` and PNG figures.

Rows are the dicts of ``analysis.json`` (``module``, ``type``, ``layer``, ``transform`` and the
measures). Figures use matplotlib's Agg canvas directly (no pyplot, no global backend state).
lm_head has layer -1 and gets its own panel (one point per transform).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "CSV_FIELDS",
    "MODULE_TYPES",
    "plot_channels",
    "plot_difficulty",
    "plot_error",
    "summarize",
    "summary_markdown",
    "type_rank",
    "write_report",
]

MODULE_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODULE_TYPES += ("lm_head",)
CSV_FIELDS = ("module", "type", "layer", "K", "N", "transform", "act_difficulty")
CSV_FIELDS += ("weight_difficulty", "error", "rel_error", "estimate")
_LABELS = {
    "act_difficulty": "activation difficulty (std of per-channel L2 magnitudes of X')",
    "weight_difficulty": "weight difficulty (std of per-input-channel L2 magnitudes of B')",
    "rel_error": "relative error ‖XB − Q(X')Q(B')‖² / ‖XB‖²",
}


def type_rank(ty: str) -> int:
    return MODULE_TYPES.index(ty) if ty in MODULE_TYPES else len(MODULE_TYPES)


def _types(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({r["type"] for r in rows}, key=lambda t: (type_rank(t), t))


def summarize(rows: list[dict[str, Any]], transforms: list[str]) -> dict[str, Any]:
    """Means over layers per module type and transform; ``best`` = lowest mean relative error."""
    out: dict[str, Any] = {}
    for key in ("error", "rel_error", "act_difficulty", "weight_difficulty"):
        out[f"mean_{key}"] = {
            ty: {
                t: float(np.mean([r[key] for r in rows if r["type"] == ty and r["transform"] == t]))
                for t in transforms
            }
            for ty in _types(rows)
        }
    out["best"] = {ty: min(v, key=v.__getitem__) for ty, v in out["mean_rel_error"].items()}
    return out


def _table(means: dict[str, dict[str, float]], bold_min: bool) -> list[str]:
    names = list(next(iter(means.values())))
    lines = ["| module type | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for ty, v in means.items():
        low = min(v.values())
        cells = [f"**{v[n]:.4g}**" if bold_min and v[n] == low else f"{v[n]:.4g}" for n in names]
        lines.append(f"| {ty} | " + " | ".join(cells) + " |")
    return lines


def summary_markdown(summary: dict[str, Any], bits: int = 4) -> str:
    """Mean relative error per type × transform (lowest in bold), then the mean difficulties."""
    lines = [f"Mean relative W{bits}A{bits} error ‖XB − Q(X')Q(B')‖²/‖XB‖² per module type:", ""]
    lines += _table(summary["mean_rel_error"], bold_min=True)
    for key, what in (("act_difficulty", "activation"), ("weight_difficulty", "weight")):
        lines += ["", f"Mean {what} difficulty (std of per-channel L2 magnitudes):", ""]
        lines += _table(summary[f"mean_{key}"], bold_min=False)
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{r[k]:.6g}" if isinstance(r[k], float) else r[k] for k in CSV_FIELDS})


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)


def _per_type(
    rows: list[dict[str, Any]], transforms: list[str], key: str, path: Path, log: bool
) -> None:
    types = _types(rows)
    cols = min(4, len(types))
    nrows = -(-len(types) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, ty in zip(axes, types, strict=False):
        for t in transforms:
            pts = sorted(
                (r["layer"], r[key]) for r in rows if r["type"] == ty and r["transform"] == t
            )
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.2, label=t)
        ax.set_title(ty)
        ax.set_xlabel("layer")
        if ty == "lm_head":
            ax.set_xticks([])
            ax.set_xlabel("")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[len(types) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    fig.suptitle(_LABELS.get(key, key))
    _save(fig, path)


def plot_difficulty(
    rows: list[dict[str, Any]], transforms: list[str], key: str, path: Path
) -> None:
    """``key`` (``act_difficulty`` or ``weight_difficulty``) per layer, one panel per type."""
    _per_type(rows, transforms, key, path, log=False)


def plot_error(rows: list[dict[str, Any]], transforms: list[str], path: Path) -> None:
    """Relative error per layer (log y), one line per transform, one panel per type."""
    _per_type(rows, transforms, "rel_error", path, log=True)


def plot_channels(module: str, magnitudes: dict[str, np.ndarray], path: Path) -> None:
    """Per-input-channel L2 magnitude of one layer's input, one stacked panel per transform,
    all on the same y scale."""
    fig = Figure(figsize=(10, 2.0 * len(magnitudes) + 0.6), layout="constrained")
    axes = fig.subplots(len(magnitudes), 1, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, (t, m) in zip(axes, magnitudes.items(), strict=True):
        ax.bar(np.arange(m.shape[0]), m, width=1.0)
        ax.set_ylabel("L2")
        ax.set_title(f"{t}: max {m.max():.3g}, median {np.median(m):.3g}, std {m.std():.3g}")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("input channel")
    fig.suptitle(f"per-channel L2 magnitude of the input of {module}")
    _save(fig, path)


def write_report(
    directory: Path,
    result: dict[str, Any],
    transforms: list[str],
    channels: dict[str, np.ndarray] | None,
) -> None:
    """Write the CSV, ``summary.md`` and the figures of ``result`` (analysis.json's content)."""
    rows = result["rows"]
    _write_csv(directory / "analysis.csv", rows)
    md = summary_markdown(result["summary"], result["config"]["bits"])
    (directory / "summary.md").write_text(md)
    plot_difficulty(rows, transforms, "act_difficulty", directory / "difficulty_activation.png")
    plot_difficulty(rows, transforms, "weight_difficulty", directory / "difficulty_weight.png")
    plot_error(rows, transforms, directory / "error.png")
    if channels is not None:
        name = result["channels_module"]
        plot_channels(name, channels, directory / f"channels_{name}.png")

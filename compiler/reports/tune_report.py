"""What ``compile --tune`` did, next to the model: ``tune.json``, ``tune.md`` (the per-block loss
table) and ``tune_loss.png`` (the same losses, before and after, per block)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from smoothrot.compiler.tune.bisup import TuneResult

__all__ = ["write_tune_report"]


def _summary(result: TuneResult) -> dict[str, Any]:
    blocks = result.blocks
    return {
        "config": asdict(result.config),
        "blocks": len(blocks),
        "kept": sum(b.kept for b in blocks),
        "act_clip_quantizers": result.act_clip_quantizers,
        "parameters": sum(b.parameters for b in blocks if b.kept),
        "loss_untuned_last_block": blocks[-1].loss_untuned if blocks else None,
        "loss_tuned_last_block": blocks[-1].loss_after if blocks else None,
        "seconds": round(sum(b.seconds for b in blocks), 1),
    }


def _markdown(summary: dict[str, Any], result: TuneResult) -> str:
    c, clips = result.config, result.act_clip_quantizers
    lines = [
        "# smoothrot tuning report (BiSup block-wise reconstruction)",
        "",
        f"{c.sequences} calibration sequences × {c.seq} tokens, batch {c.batch}, {c.epochs} "
        f"epochs ({c.steps} Adam steps per block, lr {c.lr}), seed {c.seed}; tuned: INT4 group "
        f"scales{', RMSNorm γ' if c.gamma else ''}"
        f"{f', {clips} INT4 activation clipping ratios' if clips else ''}. "
        f"{summary['kept']} of {summary['blocks']} blocks kept their tuned constants "
        f"({summary['parameters']} scalars); "
        f"{summary['seconds']} s.",
        "",
        "Loss: the block output's mean squared error relative to the float block's mean square, "
        "on all tuning sequences, with every earlier block quantized (and tuned).",
        "",
        "| block | untuned model | tuned so far, this block untuned | tuned | kept | scalars "
        "| seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in result.blocks:
        lines.append(
            f"| {b.block} | {b.loss_untuned:.4e} | {b.loss_before:.4e} | {b.loss_after:.4e} | "
            f"{'yes' if b.kept else 'no'} | {b.parameters} | {b.seconds} |"
        )
    return "\n".join(lines) + "\n"


def _plot(result: TuneResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [b.block for b in result.blocks]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.semilogy(x, [b.loss_untuned for b in result.blocks], "o-", label="quantized, untuned")
    ax.semilogy(x, [b.loss_after for b in result.blocks], "o-", label="quantized, tuned")
    ax.set_xlabel("decoder block")
    ax.set_ylabel("relative MSE of the block output")
    ax.set_title("Error accumulated down the blocks (each fed the quantized blocks before it)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_tune_report(out: Path, result: TuneResult) -> dict[str, Any]:
    """Write the three files into ``out``; return the summary that goes into report.json."""
    summary = _summary(result)
    payload = {**summary, "per_block": [asdict(b) for b in result.blocks]}
    (out / "tune.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "tune.md").write_text(_markdown(summary, result))
    _plot(result, out / "tune_loss.png")
    return summary

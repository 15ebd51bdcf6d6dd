"""``lowering.md``: the lowering report (``lowering.json``) for people."""

from __future__ import annotations

from typing import Any

__all__ = ["lowering_markdown"]


def lowering_markdown(r: dict[str, Any]) -> str:
    ex, sh, lay, rot = r["exactness_level0"], r["shipped_vs_qdq"], r["layers"], r["rotations"]
    lines = [
        f"# smoothrot lowering report: ONNX Runtime CPU, accuracy level {r['accuracy_level']}",
        "",
        f"Lowered {lay['lowered']} INT4 layers ({lay['by_grouping']}) into kernel nodes "
        f"{lay['kernel_nodes']} (MatMulNBits block sizes {lay['block_sizes']}; per-IC kernel "
        f"`{r['per_ic_kernel']}`, per-OC kernel `{r['per_oc_kernel']}`).",
        f"Left as QDQ: {lay['left_as_qdq'] or 'none'}.",
        f"Online rotations as one `KroneckerRotation` node each: {rot['lowered']} (rotation "
        f"kernel `{r['rotation_kernel']}`; left as four nodes: "
        f"{rot['left_as_matmuls'] or 'none'}).",
        f"Attention layers as one `GroupedAttention` node each: {r['attention']['lowered']} "
        f"(attention kernel `{r['attention_kernel']}`; left as exported: "
        f"{r['attention']['left_as_exported'] or 'none'}).",
        "",
        "| check (logits on {} tokens, the last {} decoded with the KV cache, vs the QDQ model) "
        "| max abs diff | SNR dB | top-1 |".format(ex["tokens"], ex["decode_steps"]),
        "|---|---|---|---|",
        f"| lowering at level 0 (exactness) | {ex['max_abs_logit_diff']:.3g} | "
        f"{ex['logit_snr_db']:.1f} | {ex['top1_agreement']:.1%} |",
        f"| shipped, level {r['accuracy_level']} | {sh['max_abs_logit_diff']:.3g} | "
        f"{sh['logit_snr_db']:.1f} | {sh['top1_agreement']:.1%} |",
        "",
    ]
    if "perplexity" in r:
        p = r["perplexity"]
        lines += [
            f"Perplexity ({p['tokens']} tokens of the {p['text']}): QDQ model (level 0) "
            f"{p['qdq_level0']:.3f}, lowered (level {r['accuracy_level']}) {p['lowered']:.3f}, "
            f"ratio {p['ratio']:.4f}.",
            "",
        ]
    size = r["size_bytes"]
    lines.append(f"Model on disk: {size['qdq'] / 1e6:.1f} MB → {size['lowered'] / 1e6:.1f} MB.")
    return "\n".join(lines) + "\n"

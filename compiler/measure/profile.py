"""``smoothrot bench --profile``: where a decoded token's time goes, from ONNX Runtime's profiler.

One prefill of ``prompt_tokens``, then ``steps`` greedy decode steps in a session with ORT's
profiling on; the kernel times of the decode steps are summed per op type and divided by the
steps. Shares are fractions of the decode steps' ``model_run`` time (what a ``session.run``
costs inside ORT, dispatch included). ``online_rotation`` sums the nodes the online-rotation pass
marked (``smoothrot.rotation``), in either form (our op or the four standard nodes), so the
online Hadamard overhead is measured inside one run rather than as a difference of two noisy
runs.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.passes._graph import ROTATION_MARK

__all__ = ["profile_decode", "profile_table"]


def _rotation_nodes(model_path: Path) -> set[str]:
    proto = onnx.load(str(model_path), load_external_data=False)
    return {
        node.name
        for node in proto.graph.node
        if any(p.key == ROTATION_MARK and p.value == "online" for p in node.metadata_props)
    }


def profile_decode(
    directory: Path, prompt_tokens: int = 128, steps: int = 32, threads: int = 0, seed: int = 0
) -> dict[str, Any]:
    """Per-op-type decode time (ms per token, node count) and the online rotations' share."""
    if prompt_tokens < 1 or steps < 1:
        raise ValueError("prompt tokens and profiled steps must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        decoder = OrtDecoder(directory, threads, profile_prefix=str(Path(tmp) / "decode"))
        rotation = _rotation_nodes(decoder.directory / decoder.manifest.model_file)
        rng = np.random.default_rng(seed)
        ids = rng.integers(0, decoder.manifest.dims.vocab, size=(1, prompt_tokens))
        logits, past = decoder.forward(ids)
        for _ in range(steps):
            token = np.array([[int(np.argmax(logits[0, -1]))]])
            logits, past = decoder.forward(token, past)
        events = json.loads(Path(decoder.session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    prefill_end = runs[0]["ts"] + runs[0]["dur"]  # the first run is the prefill
    run_us = sum(r["dur"] for r in runs[1:])
    time_us: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    rotation_us = 0.0
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or e["ts"] < prefill_end:
            continue
        op = e.get("args", {}).get("op_name", "?")
        time_us[op] += e["dur"]
        nodes[op] += 1
        if name.removesuffix("_kernel_time") in rotation:
            rotation_us += e["dur"]
    return {
        "steps": steps,
        "prompt_tokens": prompt_tokens,
        "ms_per_token": run_us / steps / 1e3,
        "kernels_ms_per_token": sum(time_us.values()) / steps / 1e3,
        "nodes_per_token": sum(nodes.values()) / steps,
        "online_rotation_share": rotation_us / run_us if run_us else 0.0,
        "by_op": {
            op: {"ms_per_token": us / steps / 1e3, "nodes": nodes[op] // steps}
            for op, us in time_us.most_common()
        },
    }


def profile_table(profile: dict[str, Any], top: int = 12) -> str:
    lines = [
        f"profiled {profile['steps']} decode steps after {profile['prompt_tokens']} prompt "
        f"tokens: {profile['ms_per_token']:.2f} ms/token in ONNX Runtime, "
        f"{profile['nodes_per_token']:.0f} kernels/token, online rotations "
        f"{profile['online_rotation_share']:.1%} of the time",
        "| op type | ms / token | share | nodes |",
        "|---|---|---|---|",
    ]
    for op, row in list(profile["by_op"].items())[:top]:
        share = row["ms_per_token"] / profile["ms_per_token"]
        lines.append(f"| {op} | {row['ms_per_token']:.3f} | {share:.1%} | {row['nodes']} |")
    return "\n".join(lines)

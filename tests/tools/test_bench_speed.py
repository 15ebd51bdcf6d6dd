"""bench_speed on a tiny export: every row builds, is benchmarked in its own process, is tabled."""

import json

from smoothrot.tools.bench_docs import command_line
from smoothrot.tools.bench_speed import FP32, PEER, ROTATION_MATMUL, ROWS, parse_args, run


def test_bench_speed_rows_on_a_tiny_model(tmp_path, tiny_export):
    out = tmp_path / "speed"
    argv = ["-o", str(out), "--onnx", str(tiny_export("llama")), "--runs", "1"]
    argv += ["--rounds", "2"]
    argv += ["--prompt-tokens", "8", "--new-tokens", "4", "--layer-shapes", "64x96"]
    argv += ["--docs", str(tmp_path / "docs" / "speed.md")]
    wanted = {FP32, PEER, "ours w4a16 per-OC, rotate", "ours w4a16 per-OC, no online Hadamard"}
    wanted.add(ROTATION_MATMUL)  # profiled: its online rotations' share of the decode time
    rows = [r for r in ROWS if r.name in wanted]
    command = command_line("smoothrot.tools.bench_speed", argv)
    results = run(parse_args(argv), rows, command)
    assert [r["row"] for r in results] == [r.name for r in rows]
    assert all(r["decode_tokens_per_s"] > 0 for r in results)
    assert all(len(r["decode_tokens_per_s_rounds"]) == 2 for r in results)
    fp32, peer, ours = results[0], results[1], results[3]
    assert 0 < results[2]["online_rotation_share"] < 1
    assert ours["model_bytes"] < fp32["model_bytes"] and peer["model_bytes"] < fp32["model_bytes"]
    text = (out / "results.md").read_text()
    assert "Online Hadamard share of decode time" in text and "× peer" in text
    assert f"Online Hadamard share (ORT profiler), {ROTATION_MATMUL}: " in text
    payload = json.loads((out / "results.json").read_text())
    assert payload["memory_bandwidth_bytes_per_s"] > 0 and len(payload["layers"]) == 5
    assert (out / "decode_speed.png").stat().st_size > 0
    page = (tmp_path / "docs" / "speed.md").read_text()  # --docs: header, tables, the plot
    assert page.startswith("# Decode speed\n\nRegenerate this page with `" + command + "`.")
    assert "| commit |" in page and "| CPU flags |" in page and "| onnxruntime |" in page
    assert text.strip() in page and "![decode speed](decode_speed.png)" in page
    assert (tmp_path / "docs" / "decode_speed.png").stat().st_size > 0

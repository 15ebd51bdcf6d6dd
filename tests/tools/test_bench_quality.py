"""bench_quality on a tiny export: the peer keeps lm_head fp32, every row gets evaluated."""

import onnx_ir as ir

from smoothrot.compiler.config import EvalConfig
from smoothrot.core.manifest import load_manifest
from smoothrot.passes.model_map import build_model_map
from smoothrot.tools.bench_quality import ROWS, run, write_docs
from smoothrot.tools.peer_ort import PeerConfig, quantize_with_ort


def test_peer_quantizes_every_layer_but_lm_head(tmp_path, tiny_export):
    src = tiny_export("llama")
    out = quantize_with_ort(src, tmp_path / "peer", PeerConfig())
    graph = ir.load(str(out / "model.onnx"))
    fused = [n for n in graph.graph if n.op_type == "MatMulNBits"]
    assert len(fused) == 2 * 7 and all(n.attributes.get_int("accuracy_level") == 0 for n in fused)
    head = build_model_map(ir.load(str(src / "model.onnx")), load_manifest(src).dims).lm_head
    kept = [n for n in graph.graph if n.op_type == "MatMul" and n.name == head.node.name]
    assert len(kept) == 1  # lm_head stays an fp32 MatMul, as in our recipes


def test_bench_rows_run_on_one_protocol(tmp_path, tiny_export):
    rows = [r for r in ROWS if r.name == "fp32" or "RTN sym b128, acc 0" in r.name]
    rows += [r for r in ROWS if r.name == "ours w4a16 RTN per-OC, rotate"]
    model_dirs = {}
    eval_config = EvalConfig(seq=32, windows=2)
    results = run(tmp_path / "b", tiny_export("llama"), rows, eval_config, model_dirs=model_dirs)
    assert [r["row"] for r in results] == [r.name for r in rows]
    assert all(r["ppl"] > 1 and r["size_bytes"] > 0 for r in results)
    assert results[0]["ppl_prompt"] > 1 and results[0]["prompt_tokens"] > 0
    assert results[1]["ppl"] != results[0]["ppl"]  # the peer row really is quantized
    assert (tmp_path / "b" / "results.json").is_file()
    assert set(model_dirs) == {r.name for r in rows}
    command = "python -m smoothrot.tools.bench_quality --docs docs/quality.md"
    write_docs(tmp_path / "docs" / "quality.md", command, results, eval_config, model_dirs)
    page = (tmp_path / "docs" / "quality.md").read_text()
    assert page.startswith("# Quality\n\nRegenerate this page with `" + command + "`.")
    assert "| commit |" in page and "| CPU flags |" in page and "| onnxruntime |" in page
    assert all(f"| {r.name} |" in page for r in rows) and "2 × 32 tokens" in page

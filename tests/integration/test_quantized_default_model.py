"""The w4a16 recipe on the real default model meets its target (perplexity <= 1.10 x fp32), and its
ORT lowering is exact at level 0 and within 1 % in perplexity at the shipped level."""

import json

import pytest

from smoothrot.compiler.compile import compile_model
from smoothrot.compiler.config import CompileConfig, LowerConfig
from smoothrot.compiler.recipes import Recipe
from smoothrot.compiler.targets.ort.lower import lower_model


@pytest.mark.slow
def test_w4a16_recipe_on_the_default_model(default_export, tmp_path):
    out = tmp_path / "w4a16"
    report = compile_model(out, CompileConfig(Recipe.W4A16), onnx_dir=default_export)
    ppl = report["perplexity"]
    assert abs(ppl["before"] - 14.705) < 0.01  # the fp32 reference of the README
    assert ppl["ratio"] <= 1.10, ppl
    assert report["transform"] == "rotate"
    layers = report["layers"]
    assert len(layers) == 30 * 7 and set(report["grouping_counts"]) == {"per-oc", "per-ic"}
    assert all(lay["errors"][lay["grouping"]] == min(lay["errors"].values()) for lay in layers)
    assert report["size_bytes"]["output"] < 0.5 * report["size_bytes"]["input"]
    assert json.loads((out / "report.json").read_text())["perplexity"] == ppl

    lowered = lower_model(out, tmp_path / "ort", LowerConfig(accuracy_level=4))
    assert lowered["layers"]["by_grouping"] == report["grouping_counts"]
    assert not lowered["layers"]["left_as_qdq"]
    # One kernel node per layer, ours by default: per-IC, and per-OC with groups of 64·j.
    oc_blocks = [lay["block"] for lay in layers if lay["grouping"] == "per-oc"]
    ours = sum(block % 64 == 0 for block in oc_blocks)
    kernels = {
        "MatMulInt4PerIC": report["grouping_counts"]["per-ic"],
        "MatMulInt4PerOC": ours,
        "MatMulNBits": len(oc_blocks) - ours,
    }
    assert ours > 0 and lowered["layers"]["kernel_nodes"] == {k: v for k, v in kernels.items() if v}
    # Every online rotation of the rotate recipe (the down_proj inputs) is one node of ours.
    assert lowered["rotations"]["lowered"] == 30 and not lowered["rotations"]["left_as_matmuls"]
    assert lowered["attention"] == {"lowered": 30, "left_as_exported": {}}
    assert lowered["exactness_level0"]["max_abs_logit_diff"] < 1e-3
    assert abs(lowered["perplexity"]["qdq_level0"] - ppl["after"]) < 1e-9
    assert abs(lowered["perplexity"]["ratio"] - 1) <= 0.01, lowered["perplexity"]

"""Streamed compile (``compile --model``, layer by layer) against the whole-graph pipeline on
tiny random models: the exact stage reproduces the export's logits, every recipe's result
reproduces the whole-graph compile's, and the report carries the streamed measurements."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from smoothrot.compiler.compile import compile_model
from smoothrot.compiler.config import Calibration, CompileConfig, Recipe, StreamMode
from smoothrot.compiler.measure.probes import logits_probe
from smoothrot.passes.quantize_weights import Algorithm, WeightQuantConfig


def _config(recipe: Recipe, **kw) -> CompileConfig:
    return CompileConfig(recipe, calibration_tokens=512, **kw)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "qwen3"])
def test_exact_stream_matches_the_export(arch, tiny_model_dir, tiny_export, tmp_path):
    out = tmp_path / "s"
    report = compile_model(out, _config(Recipe.FP_ROTATE), model=str(tiny_model_dir(arch)))
    assert report["stream"]["calibration"] == "float model"
    assert report["exactness"]["max_abs_logit_diff"] < 1e-4
    probe = logits_probe(tiny_export(arch), out, decode_steps=4)
    assert probe["max_abs_logit_diff"] < 1e-4, probe
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    names = [n.name for n in proto.graph.node]
    assert len(names) == len(set(names))
    assert [i.name for i in proto.graph.input][:5] == [
        "input_ids", "attention_mask", "position_ids", "past.0.key", "past.0.value"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "recipe, algorithm, lm_head",
    [
        (Recipe.W4A16, Algorithm.GPTQ, False),
        (Recipe.W4A4KV4, Algorithm.RTN, False),
        (Recipe.W4A8, Algorithm.RTN, True),
    ],
)
def test_stream_matches_the_whole_graph_compile(
    recipe, algorithm, lm_head, tiny_model_dir, tiny_export, tmp_path
):
    weights = WeightQuantConfig(algorithm=algorithm, lm_head=lm_head)
    streamed = tmp_path / "streamed"
    whole = tmp_path / "whole"
    config = _config(recipe, weights=weights, stream=StreamMode.ON)
    report = compile_model(streamed, config, model=str(tiny_model_dir("llama")))
    compile_model(whole, _config(recipe, weights=weights), onnx_dir=tiny_export("llama"))
    probe = logits_probe(whole, streamed)
    assert probe["max_abs_logit_diff"] < 1e-3, probe
    ops = [
        sorted(
            n.op_type for n in onnx.load(str(d / "model.onnx"), load_external_data=False).graph.node
        )
        for d in (streamed, whole)
    ]
    assert ops[0].count("DequantizeLinear") == ops[1].count("DequantizeLinear") >= 14
    assert report["exact_stage"]["max_abs_logit_diff"] < 1e-4
    whole_report = json.loads((whole / "report.json").read_text())
    assert report["perplexity"]["after"] == pytest.approx(
        whole_report["perplexity"]["after"], rel=1e-4
    )
    assert report["perplexity"]["before"] == pytest.approx(
        whole_report["perplexity"]["before"], rel=1e-5
    )
    assert len(report["layers"]) == 14 + lm_head
    assert {row["stage"] for row in report["stages"]} >= {"trace", "head", "layers", "assemble"}
    assert all(row["peak_rss_mb"] > 0 for row in report["stages"])


def test_sequential_calibration_changes_the_hessians(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir("llama"))
    float_cal = compile_model(tmp_path / "f", _config(Recipe.W4A16, evaluate=False), model=model)
    sequential = _config(Recipe.W4A16, evaluate=False, calibration=Calibration.SEQUENTIAL)
    seq = compile_model(tmp_path / "s", sequential, model=model)
    assert seq["stream"]["calibration"] == "sequential"
    assert "logits" not in seq and "perplexity" not in seq
    first = [lay["errors"] for lay in float_cal["layers"]]
    second = [lay["errors"] for lay in seq["layers"]]
    assert first[:7] == second[:7]  # layer 0 sees the same (float) input either way
    assert first[7:] != second[7:]  # layer 1 sees the quantized layer 0's output
    data = [(tmp_path / d / "model.onnx.data").read_bytes() for d in ("f", "s")]
    assert data[0] != data[1]
    assert np.isfinite([lay["snr_db"] for lay in seq["layers"]]).all()


def test_sequential_calibration_needs_a_streamed_compile():
    for whole in ({"stream": StreamMode.OFF}, {"dump_after": ("quantize_weights",)}):
        with pytest.raises(ValueError, match="sequential .* needs a streamed compile"):
            CompileConfig(Recipe.W4A16, calibration=Calibration.SEQUENTIAL, **whole)

"""smoothrot build on the tiny model: TensorRT-RTX engines built on the CPU, graphs checked."""

import json
import sys

import onnx_ir as ir
import pytest

from smoothrot.compiler.compile import compile_model
from smoothrot.compiler.config import BuildConfig, CompileConfig, EngineConfig
from smoothrot.compiler.recipes import Recipe
from smoothrot.compiler.targets.trt.build import build_model, trt_graph
from smoothrot.compiler.targets.trt.engine import check_engine_header
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.tensorrt import ENGINE_FILE, TrtBackend, load_trt
from smoothrot.passes.quantize_weights import Algorithm, GroupingMode, WeightQuantConfig
from smoothrot.tools.cli import main
from tests.helpers import SMALL_ENGINE, compile_rtn
from tests.tools.test_cli import _fails_cleanly


def test_tiny_w4a8_engine_builds_and_its_graph_is_checked(rtx, tiny_export, tmp_path):
    qdq = compile_rtn(tiny_export("llama"), tmp_path / "qdq", Recipe.W4A8, GroupingMode.ADADIM)
    out = tmp_path / "trt"
    config = BuildConfig(TrtBackend.TENSORRT_RTX, SMALL_ENGINE, evaluate=False)
    report = build_model(qdq, out, config)
    assert (out / ENGINE_FILE).stat().st_size == report["size_bytes"]["engine"] > 0
    assert report["engine"]["header_valid"] and report["graph"]["qdq_rewritten"] == 2 * 4
    checks = report["checks"]
    assert checks["exactness_fp32"]["max_abs_logit_diff"] == 0.0
    assert checks["fp16_vs_qdq"]["logit_snr_db"] > 30
    assert checks["greedy"]["steps"] == 32
    assert json.loads((out / "build.json").read_text())["size_bytes"] == report["size_bytes"]
    assert "engine.trt" in (out / "build.md").read_text()
    trtexec = (out / "trtexec.sh").read_text()  # the same engine where only trtexec exists
    assert "--stronglyTyped" in trtexec and "--profile=1" in trtexec
    assert "past.1.value:1x2x0x16" in trtexec and "attention_mask:1x128" in trtexec
    damaged = bytearray((out / ENGINE_FILE).read_bytes()[:64])
    damaged[0] ^= 0xFF  # the magic number
    assert check_engine_header(rtx, bytes(damaged))["header_valid"] is False


def test_tiny_w4a4kv4_engine_builds_with_its_kv_cache_qdq(rtx, tiny_export, tmp_path):
    weights = WeightQuantConfig(GroupingMode.PER_OC, 32, Algorithm.RTN)
    config = CompileConfig(
        Recipe.W4A4KV4, weights=weights, kv_prefix=4, calibration_tokens=1024, evaluate=False
    )
    compile_model(tmp_path / "qdq", config, onnx_dir=tiny_export("llama"))
    build = BuildConfig(TrtBackend.TENSORRT_RTX, SMALL_ENGINE, evaluate=False)
    report = build_model(tmp_path / "qdq", tmp_path / "trt", build)
    assert report["graph"]["qdq_rewritten"] > 2 * 4  # activations and the K/V entries
    assert report["checks"]["exactness_fp32"]["max_abs_logit_diff"] == 0.0
    assert report["engine"]["header_valid"]


def test_build_refuses_what_it_cannot_build(rtx, capsys, tiny_export, tmp_path):
    fp32 = str(tiny_export("llama"))
    out = tmp_path / "o"
    _fails_cleanly(capsys, ["build", fp32, "-o", fp32], "is the input")
    _fails_cleanly(capsys, ["build", str(tmp_path / "none"), "-o", str(out)], "does not exist")
    bad_cc = ["build", fp32, "-o", str(out), "--compute-capability", "70"]
    _fails_cleanly(capsys, bad_cc, "not a TensorRT-RTX target")
    ort_dir = tmp_path / "ort"
    argv = ["compile", "--onnx", fp32, "--recipe", "w4a16", "-o", str(ort_dir), "--no-eval"]
    assert main(argv + ["--algorithm", "rtn", "--group-size", "32", "--target", "ort"]) == 0
    capsys.readouterr()
    _fails_cleanly(capsys, ["build", str(ort_dir), "-o", str(out)], "lowered for ONNX Runtime")
    assert not out.exists()


def test_plugin_graph_keeps_plugin_constants_fp32(tiny_export, tmp_path, capsys):
    qdq = compile_rtn(tiny_export("llama"), tmp_path / "qdq", Recipe.W4A8, GroupingMode.PER_IC)
    model, info = trt_graph(qdq, plugins=True)
    # w4a8 rotates: one online Hadamard per layer (down_proj's input)
    assert info["plugins"] == {"w4a8_gemm": 2 * 7, "kron_hadamard": 2}
    assert info["qdq_rewritten"] == 0
    plugin_nodes = [n for n in model.graph if n.domain == "smoothrot"]
    assert len(plugin_nodes) == 16 and not any(n.op_type == "QuantizeLinear" for n in model.graph)
    for node in plugin_nodes:
        x, *constants = node.inputs
        assert x.dtype == ir.DataType.FLOAT16 and node.outputs[0].dtype == ir.DataType.FLOAT16
        dtypes = {c.dtype for c in constants}
        assert ir.DataType.FLOAT in dtypes and dtypes <= {ir.DataType.INT8, ir.DataType.FLOAT}
    argv = ["build", str(qdq), "-o", str(tmp_path / "o"), "--plugins"]
    capsys.readouterr()  # the compile's progress bars
    _fails_cleanly(capsys, argv + ["--trt-backend", "tensorrt-rtx"], "no plugin API")


def test_engine_config_and_backend_errors(monkeypatch):
    with pytest.raises(ValueError, match="--opt-prompt must be in 1..8"):
        EngineConfig(max_prompt=8, opt_prompt=16)
    with pytest.raises(ValueError, match="not a TensorRT-RTX target"):
        EngineConfig(compute_capabilities=(90,))
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    with pytest.raises(SmoothrotError, match=r"tensorrt is not importable: .*>= 10\.9"):
        load_trt(TrtBackend.TENSORRT)


def test_a_build_that_cannot_fit_is_refused_up_front(tiny_export, tmp_path, monkeypatch):
    from smoothrot.compiler.stream import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    config = BuildConfig(TrtBackend.TENSORRT_RTX, SMALL_ENGINE, evaluate=False)
    with pytest.raises(SmoothrotError, match=r"building .* needs ~\d+\.\d GB .* 0\.0 GB available"):
        build_model(tiny_export("llama"), tmp_path / "trt", config)
    assert not (tmp_path / "trt").exists()

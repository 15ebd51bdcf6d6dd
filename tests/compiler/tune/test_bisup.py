"""`compile --tune` (BiSup block-wise reconstruction): same graph structure, lower block error,
deterministic, clean errors. On the tiny Llama; the real model's numbers are in bench_quality."""

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from smoothrot.compiler.compile import compile_model
from smoothrot.compiler.config import CompileConfig, TuneConfig
from smoothrot.compiler.recipes import Recipe
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.compiler.tune.bisup import _tuned_constants
from smoothrot.core.manifest import load_manifest
from smoothrot.passes._graph import ACT_QUANT_MARK
from smoothrot.passes.model_map import build_model_map
from smoothrot.passes.quantize_weights import Algorithm, GroupingMode, WeightQuantConfig
from tests.tools.test_cli import _fails_cleanly

TUNE = TuneConfig(sequences=8, seq=32, batch=4, epochs=4, lr=1e-2)
WEIGHTS = WeightQuantConfig(GroupingMode.PER_OC, 32, Algorithm.RTN)
IDS = np.random.default_rng(5).integers(0, 49152, size=(1, 40))


def _compile(src, out, tune: TuneConfig | None, recipe: Recipe = Recipe.W4A4):
    config = CompileConfig(
        recipe, weights=WEIGHTS, calibration_tokens=1024, evaluate=False, tune=tune
    )
    return compile_model(out, config, onnx_dir=src)


def _graph(directory):
    return onnx.load(str(directory / "model.onnx"))


@pytest.fixture(scope="module")
def tuned_pair(tiny_export, tmp_path_factory):
    src = tiny_export("llama")
    root = tmp_path_factory.mktemp("tune")
    _compile(src, root / "plain", None)
    _compile(src, root / "tuned", TUNE)
    return src, root / "plain", root / "tuned"


def test_tuned_graph_has_the_untuned_structure(tuned_pair):
    _, plain, tuned = tuned_pair
    a, b = _graph(plain).graph, _graph(tuned).graph
    assert [(n.op_type, list(n.attribute)) for n in a.node] == [
        (n.op_type, list(n.attribute)) for n in b.node
    ]
    shapes = sorted((tuple(t.dims), t.data_type) for t in a.initializer)
    tuned_shapes = sorted((tuple(t.dims), t.data_type) for t in b.initializer)
    # A γ the exporter shared between norms gets one private copy per norm, and each INT4
    # activation quantizer its own clipping divisor (a scalar); nothing else is new.
    extra = [s for s in tuned_shapes if s not in shapes or tuned_shapes.count(s) > shapes.count(s)]
    assert extra and all(len(dims) <= 1 for dims, _ in extra)
    int4 = {t.name: onnx.numpy_helper.to_array(t) for t in a.initializer if t.data_type == 22}
    same = {t.name: onnx.numpy_helper.to_array(t) for t in b.initializer if t.name in int4}
    assert int4 and all(np.array_equal(int4[k], same[k]) for k in int4)  # the INT4 codes stay


def test_tuning_lowers_the_accumulated_block_error(tuned_pair):
    src, plain, tuned = tuned_pair
    report = json.loads((tuned / "tune.json").read_text())
    blocks = report["per_block"]
    assert len(blocks) == 2 and report["kept"] >= 1
    assert all(b["loss_after"] <= b["loss_before"] for b in blocks)
    assert blocks[-1]["loss_after"] < blocks[-1]["loss_untuned"]
    assert (tuned / "tune.md").is_file() and (tuned / "tune_loss.png").is_file()
    assert "Tuned (BiSup" in (tuned / "report.md").read_text()
    # The folded constants are what ONNX Runtime runs: the tuned model's logits differ.
    ref, _ = OrtDecoder(src).forward(IDS)
    untuned, _ = OrtDecoder(plain).forward(IDS)
    ours, _ = OrtDecoder(tuned).forward(IDS)
    assert np.abs(ours - untuned).max() > 1e-3
    assert np.isfinite(ours).all() and ours.shape == ref.shape


def _clip_divisors(directory) -> list[float]:
    """The constant each INT4 activation quantizer divides its absmax by (7 as inserted)."""
    graph = ir.load(str(directory / "model.onnx")).graph
    return [
        float(n.inputs[1].const_value.numpy())
        for n in graph
        if n.op_type == "Div" and n.metadata_props.get(ACT_QUANT_MARK) == "int4"
    ]


def test_int4_activation_clipping_is_tuned(tuned_pair):
    _, plain, tuned = tuned_pair
    assert set(_clip_divisors(plain)) == {7.0}
    divisors = _clip_divisors(tuned)
    assert len(divisors) == 8  # 2 layers × (qkv, o, gate/up, down)
    assert any(d != 7.0 for d in divisors) and all(3.5 < d < 14 for d in divisors)
    assert "8 INT4 activation clipping ratios" in (tuned / "tune.md").read_text()


def test_int8_activation_quantizers_are_not_tuned(tiny_export, tmp_path):
    """w4a8 keeps ``absmax / 127``, the form the TensorRT W4A8 plugin lowering expects."""
    _compile(tiny_export("llama"), tmp_path / "w4a8", None, Recipe.W4A8)
    model = ir.load(str(tmp_path / "w4a8" / "model.onnx"))
    layers = build_model_map(model, load_manifest(tmp_path / "w4a8").dims).require().layers
    tuned = {v.name for layer in layers for v in _tuned_constants(layer, TUNE)[0]}
    divs = [n for n in model.graph if n.op_type == "Div" and n.metadata_props.get(ACT_QUANT_MARK)]
    assert divs and not tuned & {n.inputs[1].name for n in divs}


def test_tuning_is_deterministic(tuned_pair, tmp_path):
    src, _, tuned = tuned_pair
    again = tmp_path / "again"
    _compile(src, again, TUNE)

    def losses(directory):
        blocks = json.loads((directory / "tune.json").read_text())["per_block"]
        return [{k: v for k, v in b.items() if k != "seconds"} for b in blocks]

    assert losses(again) == losses(tuned)
    first = {t.name: t.raw_data for t in _graph(tuned).graph.initializer}
    second = {t.name: t.raw_data for t in _graph(again).graph.initializer}
    assert first == second


def test_tune_config_and_cli_errors(capsys, tmp_path, tiny_export):
    with pytest.raises(ValueError, match="multiple of the batch"):
        TuneConfig(sequences=10, batch=4)
    with pytest.raises(ValueError, match="lr"):
        TuneConfig(lr=0)
    with pytest.raises(ValueError, match="needs an INT4 recipe"):
        CompileConfig(Recipe.FP_ROTATE, tune=TuneConfig())
    with pytest.raises(NotImplementedError, match="quantized KV cache"):
        CompileConfig(Recipe.W4A4KV4, tune=TuneConfig())
    argv = ["compile", "--onnx", str(tiny_export("llama")), "--recipe", "fp-rotate", "--tune"]
    _fails_cleanly(capsys, argv + ["-o", str(tmp_path / "o")], "needs an INT4 recipe")
    assert not (tmp_path / "o").exists()

"""Every recipe and every target on the model families beyond Llama, on their tiny random twins:
Qwen3 (per-head q/k norms), Gemma 3 (post-norms, (1 + γ) norms, q/k norms, GeGLU, scaled
embeddings, one KV head, sliding and global layers) and Phi-3 (fused qkv_proj / gate_up_proj,
split by the export). Exact recipes keep the logits; quantized
ones run, lower at accuracy level 0 exactly (up to activation-rounding flips where activations
are quantized) and build a TensorRT-RTX engine."""

import json

import numpy as np
import pytest

from smoothrot.compiler.compile import compile_model
from smoothrot.compiler.config import (
    BuildConfig,
    CompileConfig,
    LowerConfig,
    Recipe,
    StreamMode,
    TuneConfig,
)
from smoothrot.compiler.targets.ort.lower import lower_model
from smoothrot.compiler.targets.trt.build import build_model
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.qdq import QuantBits
from smoothrot.core.tensorrt import ENGINE_FILE, TrtBackend
from smoothrot.passes.quantize_weights import Algorithm, WeightQuantConfig
from tests.helpers import SMALL_ENGINE

FAMILIES = ("qwen3", "gemma3", "phi3")


def _compile(export, out, recipe: Recipe) -> dict:
    weights = WeightQuantConfig(group_size=32, algorithm=Algorithm.GPTQ)
    config = CompileConfig(recipe, weights=weights, calibration_tokens=512)
    return compile_model(out, config, onnx_dir=export)


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("recipe", [r for r in Recipe if r.exact])
def test_exact_recipes_keep_the_logits(tiny_export, tmp_path, arch, recipe):
    report = _compile(tiny_export(arch), tmp_path / "c", recipe)
    assert report["exactness"]["max_abs_logit_diff"] < 1e-4, report["logits"]
    assert report["logits"]["top1_agreement"] == 1.0


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("recipe", [r for r in Recipe if not r.exact])
def test_quantized_recipes_run_and_lower_exactly(tiny_export, tmp_path, arch, recipe):
    report = _compile(tiny_export(arch), tmp_path / "c", recipe)
    assert len(report["layers"]) == 14 and np.isfinite(report["perplexity"]["after"])
    int4_activations = recipe.spec.act_bits is QuantBits.INT4
    assert report["logits"]["logit_snr_db"] > (0 if int4_activations else 5), report["logits"]
    lowered = lower_model(tmp_path / "c", tmp_path / "l", LowerConfig(evaluate=False))
    exact = lowered["exactness_level0"]
    if recipe.spec.act_bits is None:
        assert exact["max_abs_logit_diff"] < 1e-3, exact
    else:  # an fp32 rounding apart can flip an activation's rounding to the next INT4/INT8 step
        assert exact["logit_snr_db"] > 20 and exact["top1_agreement"] >= 0.9, exact
    assert not lowered["layers"]["left_as_qdq"]


@pytest.mark.parametrize("arch", FAMILIES)
def test_w4a16_builds_a_tensorrt_rtx_engine(tiny_export, tmp_path, rtx, arch):
    _compile(tiny_export(arch), tmp_path / "c", Recipe.W4A16)
    config = BuildConfig(TrtBackend.TENSORRT_RTX, SMALL_ENGINE, evaluate=False)
    report = build_model(tmp_path / "c", tmp_path / "e", config)
    assert (tmp_path / "e" / ENGINE_FILE).stat().st_size > 0
    fp16 = report["checks"]["fp16_vs_qdq"]  # greedy runs of a random model's flat logits part
    assert fp16["logit_snr_db"] > 40 and fp16["top1_agreement"] >= 0.95, json.dumps(fp16)


@pytest.mark.parametrize("arch", ["gemma3", "qwen3"])
def test_a_blocked_residual_rotation_is_reported(tiny_export, tmp_path, arch):
    report = _compile(tiny_export(arch), tmp_path / "c", Recipe.FP_ROTATE)
    text = (tmp_path / "c" / "report.md").read_text()
    if arch == "gemma3":
        assert report["notes"][0].startswith("Fused residual rotation (R1) not applied: layer 0")
        assert f"Note: {report['notes'][0]}" in text
    else:
        assert "notes" not in report and "Note:" not in text


@pytest.mark.parametrize(("arch", "name"), [("gemma3", "Gemma 3"), ("phi3", "Phi-3")])
def test_compiled_whole_where_streaming_is_refused(tiny_model_dir, tmp_path, arch, name):
    model = str(tiny_model_dir(arch))
    config = CompileConfig(Recipe.FP_ROTATE, calibration_tokens=512, evaluate=False)
    report = compile_model(tmp_path / "auto", config, model=model)
    assert "stream" not in report and report["stages"][0]["stage"] == "export"
    with pytest.raises(SmoothrotError, match=f"--stream on: streaming {name} is not implemented"):
        compile_model(tmp_path / "on", CompileConfig(Recipe.FP_ROTATE, stream=StreamMode.ON),
                      model=model)  # fmt: skip


@pytest.mark.parametrize("arch", FAMILIES)
def test_tune_lowers_each_block_error(tiny_export, tmp_path, arch):
    """BiSup on the families' blocks: post-norms, q/k norms and GeGLU in the differentiable
    block, each block's loss no worse than it started."""
    weights = WeightQuantConfig(group_size=32, algorithm=Algorithm.RTN)
    tune = TuneConfig(sequences=8, seq=32, batch=4, epochs=3, lr=1e-2)
    config = CompileConfig(
        Recipe.W4A4, weights=weights, calibration_tokens=512, evaluate=False, tune=tune
    )
    compile_model(tmp_path / "t", config, onnx_dir=tiny_export(arch))
    report = json.loads((tmp_path / "t" / "tune.json").read_text())
    blocks = report["per_block"]
    assert len(blocks) == 2 and all(b["loss_after"] <= b["loss_before"] for b in blocks)
    assert blocks[-1]["loss_after"] < blocks[-1]["loss_untuned"]

"""ActQuantPass: per-token activation QDQ in front of the Linears, once."""

import shutil

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.calibrate.statistics import calibrate_dir
from smoothrot.compiler.calibrate.store import StatisticsLookup
from smoothrot.compiler.config import CalibrationConfig
from smoothrot.compiler.modeldir.model_dir import save_model
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.core.qdq import QuantBits
from smoothrot.passes.model_map import build_model_map
from smoothrot.passes.quantize_activations import ActQuantConfig, ActQuantPass

IDS = np.random.default_rng(2).integers(0, 49152, size=(1, 20))


@pytest.fixture(scope="module")
def llama(tiny_export, tmp_path_factory):
    """(export dir, manifest, hessian lookup) of the tiny Llama."""
    src = tiny_export("llama")
    cal = tmp_path_factory.mktemp("cal-q") / "c"
    calibrate_dir(src, CalibrationConfig(128, 32, hessian=True), cal, progress=False)
    manifest = load_manifest(src)
    return src, manifest, StatisticsLookup(cal, manifest, "hessian")


def _save_and_run(model: ir.Model, src, tmp_path) -> OrtDecoder:
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    for f in ("model.onnx", "model.onnx.data"):
        (dst / f).unlink()
    save_model(model, dst)
    return OrtDecoder(dst)


def _snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    return float(20 * np.log10(np.linalg.norm(ref) / np.linalg.norm(ref - got)))


def test_activation_pass_structure_and_idempotence(llama, tmp_path):
    src, manifest, _ = llama
    model = ir.load(src / "model.onnx")
    p = ActQuantPass(manifest.dims, ActQuantConfig(QuantBits.INT8))
    assert p(model).modified
    quant = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    assert len(quant) == 4 * manifest.dims.layers  # qkv, o, gate/up, down; lm_head not asked
    mm = build_model_map(model, manifest.dims).require()  # sees through the QDQ
    for layer in mm.layers:
        assert layer.q.input is layer.k.input is layer.v.input
        assert layer.q.input.producer().op_type == "DequantizeLinear"
    assert not p(model).modified
    logits = _save_and_run(model, src, tmp_path).forward(IDS)[0]
    assert _snr_db(OrtDecoder(src).forward(IDS)[0], logits) > 20.0  # INT8 per token: mild

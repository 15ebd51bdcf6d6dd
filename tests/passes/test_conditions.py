"""The pass contract, on every pass of the three pipelines: a pass keeps nothing between calls,
an idempotent pass run again reports ``modified=False`` (and empty details), and a pass whose
``requires`` rejects its own output says so with a clear precondition error. The chains run on
a tiny Llama of one and of two decoder layers: no pass depends on the depth of the graph."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.calibrate.statistics import calibrate_dir
from smoothrot.compiler.calibrate.store import StatisticsLookup
from smoothrot.compiler.config import CalibrationConfig
from smoothrot.compiler.modeldir.model_dir import write_model_dir
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.core.pass_infra import PassPreconditionError
from smoothrot.core.qdq import QuantBits
from smoothrot.passes._conditions import int4_dequantizers
from smoothrot.passes.fold_norm import FoldNormGammaPass
from smoothrot.passes.lower_attention import LowerAttentionPass
from smoothrot.passes.lower_ort import LowerToMatMulNBitsPass, PerIcKernel, PerOcKernel
from smoothrot.passes.lower_rotation import LowerRotationPass
from smoothrot.passes.lower_trt_plugins import LowerToTrtPluginsPass
from smoothrot.passes.model_map import LAYER_SITES, Site
from smoothrot.passes.norm_div import NormDivPass
from smoothrot.passes.online_rotation import OnlineRotationPass
from smoothrot.passes.quantize_activations import ActQuantConfig, ActQuantPass
from smoothrot.passes.quantize_kv import KVQuantConfig, KVQuantPass
from smoothrot.passes.quantize_weights import (
    Algorithm,
    GroupingMode,
    WeightQuantConfig,
    WeightQuantPass,
)
from smoothrot.passes.residual_rotation import ResidualRotationPass
from smoothrot.passes.smooth import SmoothConfig, SmoothPass
from smoothrot.passes.to_fp16 import Fp16Pass
from smoothrot.passes.trt_act_quant import TrtActivationQdqPass

RTN = WeightQuantConfig(GroupingMode.PER_IC, 32, Algorithm.RTN)


@pytest.fixture(scope="module", params=[1, 2], ids=["1-layer", "2-layer"])
def tiny(request, tiny_export, tmp_path_factory):
    src = tiny_export("llama", request.param)
    manifest = load_manifest(src)
    stats = tmp_path_factory.mktemp("absmax") / "stats"
    calibrate_dir(src, CalibrationConfig(64, 32, hessian=False), stats, progress=False)
    return src, manifest.dims, StatisticsLookup(stats, manifest, "absmax")


def _chain(tiny, kind: str) -> list[ir.passes.PassBase]:
    _, dims, absmax = tiny
    exact = [
        SmoothPass(dims, absmax, SmoothConfig(0.5, frozenset({Site.O_PROJ, Site.DOWN_PROJ}))),
        FoldNormGammaPass(dims),
        ResidualRotationPass(dims),
        OnlineRotationPass(dims, LAYER_SITES),
        WeightQuantPass(dims, lambda _: None, RTN),
    ]
    if kind == "ort":
        return [
            *exact,
            KVQuantPass(dims, KVQuantConfig(QuantBits.INT4)),
            LowerToMatMulNBitsPass(0, PerIcKernel.ORTOPS, PerOcKernel.ORTOPS),
            LowerRotationPass(),
            LowerAttentionPass(),
            NormDivPass(),
        ]
    quantized = [*exact, ActQuantPass(dims, ActQuantConfig(QuantBits.INT8))]
    if kind == "trt":
        return [*quantized, KVQuantPass(dims), TrtActivationQdqPass(), Fp16Pass(dims)]
    return [*quantized, LowerToTrtPluginsPass()]


# The one pass that refuses its own output instead of doing nothing: fp16 conversion of fp16.
REFUSES_ITS_OUTPUT = {"to_fp16": "needs a float32 graph"}


@pytest.mark.parametrize("kind", ["ort", "trt", "plugins"])
def test_every_pass_run_twice_changes_nothing_the_second_time(tiny, kind):
    src = tiny[0]
    model = ir.load(src / "model.onnx")
    for p in _chain(tiny, kind):
        first = p(model)
        assert first.modified, f"{p.name} changed nothing on its first run"
        if p.name in REFUSES_ITS_OUTPUT:
            with pytest.raises(PassPreconditionError, match=REFUSES_ITS_OUTPUT[p.name]):
                p(model)
            continue
        again = p(model)  # the same instance: a stateful pass would report its first run here
        assert not again.modified, f"{p.name} reported a change on its second run"
        for key, value in again.details.items():  # counts and lists of what was done: empty
            if isinstance(value, list | dict | int) and not isinstance(value, bool):
                assert not value, f"{p.name} second run: {key}={value!r}"


def test_exact_passes_refuse_a_quantized_graph_by_name(tiny):
    src, dims, absmax = tiny
    model = ir.load(src / "model.onnx")
    WeightQuantPass(dims, lambda _: None, RTN)(model)
    assert int4_dequantizers(model.graph)
    exact = [SmoothPass(dims, absmax), FoldNormGammaPass(dims), ResidualRotationPass(dims)]
    for p in [*exact, OnlineRotationPass(dims)]:
        with pytest.raises(PassPreconditionError, match=f"{p.name} needs float weights"):
            p(model)
        with pytest.raises(ValueError):  # the CLI prints a ValueError as one line
            p(model)


def test_one_decoder_layer_graph_keeps_its_logits_through_the_exact_chain(tiny, tmp_path):
    src = tiny[0]
    model = ir.load(src / "model.onnx")
    for p in _chain(tiny, "ort")[:4]:  # the exact passes
        p(model)
    out = tmp_path / "exact"
    out.mkdir()
    write_model_dir(model, src, load_manifest(src), out, [])
    ids = np.random.default_rng(0).integers(0, 49152, size=(1, 16))
    ref, _ = OrtDecoder(src).forward(ids)
    got, _ = OrtDecoder(out).forward(ids)
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()


def test_lowerings_refuse_fp16_and_quantizers_refuse_lowered_graphs(tiny):
    src, dims, _ = tiny
    half = ir.load(src / "model.onnx")
    Fp16Pass(dims)(half)
    # (the rotation and attention lowerings refuse non-float32 sites one by one, by name)
    for p in [LowerToMatMulNBitsPass(), LowerToTrtPluginsPass()]:
        with pytest.raises(PassPreconditionError, match=f"{p.name} needs a float32 graph"):
            p(half)
    lowered = ir.load(src / "model.onnx")
    WeightQuantPass(dims, lambda _: None, RTN)(lowered)
    LowerToMatMulNBitsPass(0, PerIcKernel.ORTOPS, PerOcKernel.ORTOPS)(lowered)
    quantizers = [WeightQuantPass(dims, lambda _: None, RTN), ActQuantPass(dims), KVQuantPass(dims)]
    for p in quantizers:
        with pytest.raises(PassPreconditionError, match=f"{p.name} needs the QDQ graph"):
            p(lowered)

"""Every pipeline smoothrot runs, declared in one place: compile, lower and build.

Each is one :class:`~smoothrot.core.pass_infra.Pipeline` (an ``onnx_ir`` ``PassManager``) whose
full order is read here; the drivers (``compiler/compile.py``, ``targets/ort/lower.py``,
``targets/trt/build.py``) only load the input, run the pipeline and write the output and report.

``compile --recipe R``::

    [calibrate]                    abs-max per input channel, if the transform smooths
    smooth → fold_norm_gamma → residual_rotation → online_rotation     (the transform's steps)
    [save_model_dir → calibrate_hessians]   the transformed float graph and its Hessians XᵀX
    quantize_weights → quantize_activations → quantize_kv             (the recipe's steps)
    [tune]                         BiSup block-wise reconstruction against the saved float graph

Calibration steps are left out when their statistics are already in the store (a benchmark's
cache); the float graph is saved when calibration or tuning needs it.

``lower``: lower_int4 → [lower_rotation] → [lower_attention] → norm_div.
``build``: [lower_trt_plugins] → trt_activation_qdq → [to_fp16].
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx_ir as ir

from smoothrot.compiler.calibrate.calibrate_pass import CalibratePass
from smoothrot.compiler.calibrate.store import StatisticsLookup, has_statistics
from smoothrot.compiler.config import CalibrationConfig, CompileConfig, LowerConfig
from smoothrot.compiler.modeldir.model_dir import SaveModelDirPass
from smoothrot.compiler.recipes import TRANSFORM_SMOOTH_SITES, Transform
from smoothrot.compiler.tune.tune_pass import TunePass
from smoothrot.core.manifest import Manifest, ModelDims
from smoothrot.core.pass_infra import Pipeline
from smoothrot.passes.fold_norm import FoldNormGammaPass
from smoothrot.passes.lower_attention import AttentionKernel, LowerAttentionPass
from smoothrot.passes.lower_ort import LowerToMatMulNBitsPass
from smoothrot.passes.lower_rotation import LowerRotationPass, RotationKernel
from smoothrot.passes.lower_trt_plugins import LowerToTrtPluginsPass
from smoothrot.passes.model_map import LAYER_SITES, Site
from smoothrot.passes.norm_div import NormDivPass
from smoothrot.passes.online_rotation import OnlineRotationPass
from smoothrot.passes.quantize_activations import ActQuantConfig, ActQuantPass
from smoothrot.passes.quantize_kv import KVQuantConfig, KVQuantPass
from smoothrot.passes.quantize_weights import WeightQuantPass
from smoothrot.passes.residual_rotation import ResidualRotationPass
from smoothrot.passes.smooth import AbsMax, SmoothConfig, SmoothPass
from smoothrot.passes.to_fp16 import Fp16Pass
from smoothrot.passes.trt_act_quant import TrtActivationQdqPass

__all__ = [
    "TRANSFORMED_DIR",
    "build_pipeline",
    "compile_pipeline",
    "exact_steps",
    "hessian_key",
    "lower_pipeline",
]

DOWN_ONLY = frozenset({Site.DOWN_PROJ})
TRANSFORMED_DIR = "transformed"  # under the compile's work directory: the float graph, saved
AfterStep = Callable[[str, ir.Model], None]


def exact_steps(
    transform: Transform, dims: ModelDims, absmax: AbsMax | None, alpha: float, seed: int
) -> list[ir.passes.PassBase]:
    """The exact (float-preserving) passes of a transform, in order."""
    steps: list[ir.passes.PassBase] = []
    if transform.smooths:
        if absmax is None:
            raise ValueError(f"transform {transform.value} smooths: it needs abs-max statistics")
        steps.append(
            SmoothPass(dims, absmax, SmoothConfig(alpha, TRANSFORM_SMOOTH_SITES[transform]))
        )
    if transform in (Transform.ROTATE, Transform.HYBRID):
        steps += [
            FoldNormGammaPass(dims),
            ResidualRotationPass(dims, per_head=True, seed=seed),
            OnlineRotationPass(dims, DOWN_ONLY, seed=seed),
        ]
    elif transform is Transform.HYBRID_ONLINE:
        steps.append(OnlineRotationPass(dims, LAYER_SITES, seed=seed))
    return steps


def hessian_key(config: CompileConfig) -> str:
    """The store folder of the Hessians of this transform's graph (the inputs quantized)."""
    t = config.transform_used.value
    return f"hessian-{t}-a{config.alpha}-s{config.seed}-{config.calibration_tokens}"


def compile_pipeline(
    config: CompileConfig,
    manifest: Manifest,
    source: Path,
    store: Path,
    work: Path,
    after_step: AfterStep | None = None,
) -> Pipeline:
    """The compile of the export in ``source``; statistics in ``store``, scratch in ``work``."""
    spec, dims, tokens = config.recipe.spec, manifest.dims, config.calibration_tokens
    transform = config.transform_used
    steps: list[ir.passes.PassBase] = []
    absmax = None
    if transform.smooths:
        absmax_dir = store / f"absmax-{tokens}"
        if not has_statistics(absmax_dir):
            cal = CalibrationConfig(tokens=tokens, hessian=False)
            steps.append(CalibratePass(source, absmax_dir, cal))
        absmax = StatisticsLookup(absmax_dir, manifest, "absmax")
    steps += exact_steps(transform, dims, absmax, config.alpha, config.seed)
    transformed = work / TRANSFORMED_DIR
    if spec.weights:
        hessian_dir = store / hessian_key(config)
        cached = has_statistics(hessian_dir)
        if not cached or config.tune is not None:
            steps.append(SaveModelDirPass(transformed, source, manifest))
        if not cached:
            cal = CalibrationConfig(tokens=tokens, hessian=True)
            steps.append(CalibratePass(transformed, hessian_dir, cal, name="calibrate_hessians"))
        hessian = StatisticsLookup(hessian_dir, manifest, "hessian")
        steps.append(WeightQuantPass(dims, hessian, config.weights, progress=True))
    if spec.act_bits is not None:
        steps.append(ActQuantPass(dims, ActQuantConfig(spec.act_bits)))
    if spec.kv_bits is not None:
        steps.append(KVQuantPass(dims, KVQuantConfig(spec.kv_bits, config.kv_prefix)))
    if config.tune is not None:
        steps.append(TunePass(transformed, config.tune))
    return Pipeline(steps, after_step)


def lower_pipeline(config: LowerConfig) -> Pipeline:
    """A QDQ graph → ONNX Runtime's fast CPU form (``compiler/targets/ort/lower.py``)."""
    steps: list[ir.passes.PassBase] = [
        LowerToMatMulNBitsPass(config.accuracy_level, config.per_ic, config.per_oc)
    ]
    if config.rotation is RotationKernel.ORTOPS:
        steps.append(LowerRotationPass())
    if config.attention is AttentionKernel.ORTOPS:
        steps.append(LowerAttentionPass())
    steps.append(NormDivPass())
    return Pipeline(steps)


def build_pipeline(
    dims: ModelDims, fp16: bool, plugins: bool, keep_fp32_domains: tuple[str, ...]
) -> Pipeline:
    """A QDQ graph → the graph TensorRT parses (``compiler/targets/trt/build.py``). With
    ``plugins``, INT4 MatMuls and online rotations first become plugin nodes, while the QDQ still
    has its fp32 meaning."""
    steps: list[ir.passes.PassBase] = []
    if plugins:
        steps.append(LowerToTrtPluginsPass())
    steps.append(TrtActivationQdqPass())
    if fp16:
        steps.append(Fp16Pass(dims, keep_fp32_domains=keep_fp32_domains))
    return Pipeline(steps)

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

``compile --model`` streamed (``compiler/stream/``), per decoder layer and once for the head::

    [reference run]  the untransformed layer on the untransformed streams (abs-max, fp eval)
    the transform's exact steps (as above)
    [calibration run] the transformed float layer: its Hessians XᵀX
    quantize_weights → quantize_activations → quantize_kv              (the recipe's steps)

``lower``: lower_int4 → [lower_rotation] → [lower_attention] → norm_div.
``build``: [lower_trt_plugins] → trt_activation_qdq → [to_fp16].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx_ir as ir

from smoothrot.compiler.calibrate.calibrate_pass import CalibratePass
from smoothrot.compiler.calibrate.store import StatisticsLookup, has_statistics
from smoothrot.compiler.config import CalibrationConfig, CompileConfig, LowerConfig
from smoothrot.compiler.modeldir.model_dir import SaveModelDirPass
from smoothrot.compiler.recipes import TRANSFORM_SMOOTH_SITES, Transform
from smoothrot.compiler.tune.tune_pass import TunePass
from smoothrot.core.manifest import Manifest, ModelDims
from smoothrot.core.pass_infra import Pipeline, pass_name
from smoothrot.passes.fold_norm import FoldNormGammaPass
from smoothrot.passes.lower_attention import AttentionKernel, LowerAttentionPass
from smoothrot.passes.lower_ort import LowerToMatMulNBitsPass
from smoothrot.passes.lower_rotation import LowerRotationPass, RotationKernel
from smoothrot.passes.lower_trt_plugins import LowerToTrtPluginsPass
from smoothrot.passes.model_map import LAYER_SITES, Linear, Site
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
    "CALIBRATE_ABSMAX",
    "CALIBRATE_HESSIANS",
    "TRANSFORMED_DIR",
    "absmax_key",
    "build_pipeline",
    "compile_pipeline",
    "compile_step_names",
    "exact_step_names",
    "exact_steps",
    "hessian_key",
    "lower_pipeline",
    "stream_passes",
]

DOWN_ONLY = frozenset({Site.DOWN_PROJ})
TRANSFORMED_DIR = "transformed"  # under the compile's work directory: the float graph, saved
CALIBRATE_ABSMAX = "calibrate"  # abs-max statistics of the export, for smoothing
CALIBRATE_HESSIANS = "calibrate_hessians"  # Hessians XᵀX of the transformed graph, for GPTQ
AfterStep = Callable[[str, ir.Model], None]


def exact_step_names(transform: Transform) -> list[str]:
    """The names of a transform's exact (float-preserving) steps, in order."""
    names = [SmoothPass.name] if transform.smooths else []
    if transform in (Transform.ROTATE, Transform.HYBRID):
        names += [FoldNormGammaPass.name, ResidualRotationPass.name, OnlineRotationPass.name]
    elif transform is Transform.HYBRID_ONLINE:
        names.append(OnlineRotationPass.name)
    return names


def exact_steps(
    transform: Transform, dims: ModelDims, absmax: AbsMax | None, alpha: float, seed: int
) -> list[ir.passes.PassBase]:
    """The exact (float-preserving) passes of a transform, in order."""
    if transform.smooths and absmax is None:
        raise ValueError(f"transform {transform.value} smooths: it needs abs-max statistics")
    online_sites = LAYER_SITES if transform is Transform.HYBRID_ONLINE else DOWN_ONLY
    fallback = transform is not Transform.HYBRID_ONLINE  # where R1 is blocked (post-norms)
    make: dict[str, Callable[[], ir.passes.PassBase]] = {
        SmoothPass.name: lambda: SmoothPass(
            dims, absmax, SmoothConfig(alpha, TRANSFORM_SMOOTH_SITES[transform])
        ),
        FoldNormGammaPass.name: lambda: FoldNormGammaPass(dims),
        ResidualRotationPass.name: lambda: ResidualRotationPass(dims, per_head=True, seed=seed),
        OnlineRotationPass.name: lambda: OnlineRotationPass(
            dims, online_sites, seed=seed, residual_fallback=fallback
        ),
    }
    return [make[name]() for name in exact_step_names(transform)]


def absmax_key(config: CompileConfig) -> str:
    """The store folder of the abs-max statistics of the export (what smoothing reads)."""
    return f"absmax-{config.calibration_tokens}"


def hessian_key(config: CompileConfig) -> str:
    """The store folder of the Hessians of this transform's graph (the inputs quantized)."""
    t = config.transform_used.value
    return f"hessian-{t}-a{config.alpha}-s{config.seed}-{config.calibration_tokens}"


def _nothing_cached(folder: str) -> bool:
    return False


def compile_step_names(
    config: CompileConfig, cached: Callable[[str], bool] = _nothing_cached
) -> list[str]:
    """The steps a compile of ``config`` runs, in order. ``cached(folder)`` says whether the
    statistics store already holds that folder (its calibration step is left out then); by
    default nothing is, so the list has every step such a compile can run (``--dump-after``)."""
    spec, transform = config.recipe.spec, config.transform_used
    names = [CALIBRATE_ABSMAX] if transform.smooths and not cached(absmax_key(config)) else []
    names += exact_step_names(transform)
    if spec.weights:
        hessians_cached = cached(hessian_key(config))
        if not hessians_cached or config.tune is not None:
            names.append(SaveModelDirPass.name)
        if not hessians_cached:
            names.append(CALIBRATE_HESSIANS)
        names.append(WeightQuantPass.name)
    if spec.act_bits is not None:
        names.append(ActQuantPass.name)
    if spec.kv_bits is not None:
        names.append(KVQuantPass.name)
    if config.tune is not None:
        names.append(TunePass.name)
    return names


def compile_pipeline(
    config: CompileConfig,
    manifest: Manifest,
    source: Path,
    store: Path,
    work: Path,
    after_step: AfterStep | None = None,
) -> Pipeline:
    """The compile of the export in ``source``; statistics in ``store``, scratch in ``work``.
    Its steps are :func:`compile_step_names`'s, each made here."""
    spec, dims, tokens = config.recipe.spec, manifest.dims, config.calibration_tokens
    transform = config.transform_used
    absmax_dir, hessian_dir = store / absmax_key(config), store / hessian_key(config)
    transformed = work / TRANSFORMED_DIR
    absmax = StatisticsLookup(absmax_dir, manifest, "absmax") if transform.smooths else None
    exact = exact_steps(transform, dims, absmax, config.alpha, config.seed)
    made = {pass_name(p): p for p in exact}
    make: dict[str, Callable[[], ir.passes.PassBase]] = {
        CALIBRATE_ABSMAX: lambda: CalibratePass(
            source, absmax_dir, CalibrationConfig(tokens=tokens, hessian=False), CALIBRATE_ABSMAX
        ),
        SaveModelDirPass.name: lambda: SaveModelDirPass(transformed, source, manifest),
        CALIBRATE_HESSIANS: lambda: CalibratePass(
            transformed,
            hessian_dir,
            CalibrationConfig(tokens=tokens, hessian=True),
            CALIBRATE_HESSIANS,
        ),
        WeightQuantPass.name: lambda: WeightQuantPass(
            dims, StatisticsLookup(hessian_dir, manifest, "hessian"), config.weights, progress=True
        ),
        ActQuantPass.name: lambda: ActQuantPass(dims, ActQuantConfig(spec.act_bits)),
        KVQuantPass.name: lambda: KVQuantPass(dims, KVQuantConfig(spec.kv_bits, config.kv_prefix)),
        TunePass.name: lambda: TunePass(transformed, config.tune),
    }
    names = compile_step_names(config, lambda folder: has_statistics(store / folder))
    return Pipeline([made[n] if n in made else make[n]() for n in names], after_step)


def _no_absmax(lin: Linear) -> np.ndarray:
    raise ValueError(f"no abs-max statistics for {lin.name} in this segment")


def stream_passes(
    config: CompileConfig, dims: ModelDims, head: bool
) -> tuple[
    Callable[[Callable[[Linear], np.ndarray] | None], list[ir.passes.PassBase]],
    Callable[[Callable[[Linear], np.ndarray]], list[ir.passes.PassBase]],
]:
    """A streamed compile's (exact, lossy) steps for one segment: a decoder layer between the
    template's small ends (``head=False``: its lm_head is never quantized) or the model's head
    (embedding, final norm, lm_head: only lm_head can be quantized, with --quantize-lm-head).
    Each is a function of the statistics the segment's calibration run produced."""
    spec, transform = config.recipe.spec, config.transform_used

    def exact(absmax: Callable[[Linear], np.ndarray] | None) -> list[ir.passes.PassBase]:
        return exact_steps(transform, dims, absmax or _no_absmax, config.alpha, config.seed)

    def lossy(hessian: Callable[[Linear], np.ndarray]) -> list[ir.passes.PassBase]:
        weights = replace(config.weights, lm_head=config.weights.lm_head and head)
        steps: list[ir.passes.PassBase] = []
        if spec.weights and (not head or weights.lm_head):
            steps.append(WeightQuantPass(dims, hessian, weights))
        if head:
            return steps
        if spec.act_bits is not None:
            steps.append(ActQuantPass(dims, ActQuantConfig(spec.act_bits)))
        if spec.kv_bits is not None:
            steps.append(KVQuantPass(dims, KVQuantConfig(spec.kv_bits, config.kv_prefix)))
        return steps

    return exact, lossy


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

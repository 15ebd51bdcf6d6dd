"""The compile pipeline, declared in one place: which passes each recipe runs, in order.

``smoothrot compile --recipe R`` =

1. export (or take an exported directory);
2. calibrate the input model (abs-max per channel) if the transform smooths;
3. the exact transform's passes (``exact_passes``): logits unchanged;
4. if the recipe quantizes weights: save the transformed graph, calibrate it again (Hessians
   ``XᵀX`` of the inputs the quantized MatMuls will really see), then the lossy passes
   (``quant_passes``): INT4 weights, activation QDQ, KV QDQ;
5. with ``tune``: block-wise reconstruction of the quantized graph against the transformed float
   graph, folded into its constants (``compiler/tune/bisup.py``; ``tune.md`` in the output);
6. save, and prove/measure: logits vs the input model on a fixed 128-token input (max |Δ| and
   SNR), perplexity before/after for lossy recipes; ``report.json`` + ``report.md``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

import smoothrot.passes
from smoothrot.compiler.calibrate.statistics import (
    CalibrationConfig,
    calibrate_dir,
    load_calibration,
    token_sequences,
)
from smoothrot.compiler.config import ExportConfig
from smoothrot.compiler.export.exporter import export_model
from smoothrot.compiler.modeldir.model_dir import save_model, write_model_dir
from smoothrot.compiler.modeldir.outdir import atomic_output_dir, check_output_dir
from smoothrot.compiler.modeldir.sources import resolve_source
from smoothrot.compiler.recipes import TRANSFORM_SMOOTH_SITES, Recipe, Transform
from smoothrot.compiler.reports.compile_report import write_report
from smoothrot.compiler.reports.tune_report import write_tune_report
from smoothrot.compiler.tune.bisup import TuneConfig, TuneResult, tune_blocks
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import MANIFEST_NAME, Manifest, load_manifest
from smoothrot.passes.fold_norm import FoldNormGammaPass
from smoothrot.passes.model_map import LAYER_SITES, Linear, Site
from smoothrot.passes.online_rotation import OnlineRotationPass
from smoothrot.passes.quantize_activations import ActQuantConfig, ActQuantPass
from smoothrot.passes.quantize_kv import KVQuantConfig, KVQuantPass
from smoothrot.passes.quantize_weights import (
    WeightQuantConfig,
    WeightQuantPass,
    check_group_sizes,
)
from smoothrot.passes.residual_rotation import ResidualRotationPass
from smoothrot.passes.smooth import SmoothConfig, SmoothPass

__all__ = [
    "CompileConfig",
    "Recipe",
    "Transform",
    "compile_model",
    "exact_passes",
    "layer_lookup",
    "statistics_store",
]

log = logging.getLogger("smoothrot.pipeline")
DOWN_ONLY = frozenset({Site.DOWN_PROJ})


@dataclass(frozen=True)
class CompileConfig:
    recipe: Recipe
    transform: Transform | None = None  # None: the recipe's own
    alpha: float = 0.5
    weights: WeightQuantConfig = field(default_factory=WeightQuantConfig)
    kv_prefix: int = 0  # BiSup P: KV entries at positions < P stay in the compute dtype
    calibration_tokens: int = 4096
    seed: int = 0
    dump_after: tuple[str, ...] = ()
    evaluate: bool = True  # perplexity before/after in the report (lossy recipes)
    tune: TuneConfig | None = None  # BiSup block-wise tuning after the lossy passes

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, Recipe):
            raise ValueError(f"recipe must be a Recipe, got {self.recipe!r}")
        if self.transform is not None and not isinstance(self.transform, Transform):
            raise ValueError(f"transform must be a Transform, got {self.transform!r}")
        SmoothConfig(alpha=self.alpha)  # validates alpha
        KVQuantConfig(keep_prefix=self.kv_prefix)  # validates P
        if self.calibration_tokens < 512:
            raise ValueError(f"calibration tokens must be >= 512, got {self.calibration_tokens}")
        if self.tune is not None and not self.recipe.spec.weights:
            raise ValueError(f"--tune needs an INT4 recipe; {self.recipe.value} has fp weights")
        if self.tune is not None and self.recipe.spec.kv_bits is not None:
            raise NotImplementedError(
                f"--tune with a quantized KV cache ({self.recipe.value}): the model map does "
                "not yet tell the KV quantizer's MatMuls from the block's Linears"
            )

    @property
    def transform_used(self) -> Transform:
        return self.transform or self.recipe.spec.transform


def exact_passes(
    transform: Transform, manifest: Manifest, absmax, alpha: float = 0.5, seed: int = 0
) -> list[tuple[str, Any]]:
    """The exact stage of a transform, in order (name, pass)."""
    dims = manifest.dims
    passes: list[tuple[str, Any]] = []
    if transform.smooths:
        sites = TRANSFORM_SMOOTH_SITES[transform]
        passes.append(("smooth", SmoothPass(dims, absmax, SmoothConfig(alpha, sites))))
    if transform in (Transform.ROTATE, Transform.HYBRID):
        passes += [
            ("fold_norm_gamma", FoldNormGammaPass(dims)),
            ("residual_rotation", ResidualRotationPass(dims, per_head=True, seed=seed)),
            ("online_rotation", OnlineRotationPass(dims, DOWN_ONLY, seed=seed)),
        ]
    elif transform is Transform.HYBRID_ONLINE:
        passes.append(("online_rotation", OnlineRotationPass(dims, LAYER_SITES, seed=seed)))
    return passes


def quant_passes(config: CompileConfig, manifest: Manifest, hessian) -> list[tuple[str, Any]]:
    spec, dims = config.recipe.spec, manifest.dims
    passes: list[tuple[str, Any]] = []
    if spec.weights:
        passes.append(("quantize_weights", WeightQuantPass(dims, hessian, config.weights, True)))
    if spec.act_bits is not None:
        passes.append(("quantize_activations", ActQuantPass(dims, ActQuantConfig(spec.act_bits))))
    if spec.kv_bits is not None:
        kv = KVQuantConfig(spec.kv_bits, config.kv_prefix)
        passes.append(("quantize_kv", KVQuantPass(dims, kv)))
    return passes


def layer_lookup(calibration: Path, manifest: Manifest, field_name: str):
    """``fn(Linear) -> array``: a per-layer calibration statistic (``absmax`` or ``hessian``)."""
    stats = load_calibration(calibration)
    module_of = {w: m for m, w in manifest.weights.items()}

    def lookup(lin: Linear) -> np.ndarray:
        if lin.name not in module_of:
            raise SmoothrotError(f"no calibration statistics for weight {lin.name}")
        value = getattr(stats.for_layer(module_of[lin.name]), field_name)
        if value is None:
            raise SmoothrotError(f"calibration has no {field_name} for {lin.name}")
        return np.asarray(value)

    return lookup


class _Stages:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def timed(self, name: str, fn, **extra: Any):
        t = time.perf_counter()
        result = fn()
        row = {"stage": name, **extra, "seconds": round(time.perf_counter() - t, 2)}
        if hasattr(result, "modified"):
            row["modified"] = result.modified
        self.rows.append(row)
        log.info("%s in %.2fs", name, row["seconds"])
        return result


def compile_model(
    out: Path,
    config: CompileConfig,
    model: str | None = None,
    onnx_dir: Path | None = None,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Compile to ``out`` (atomically). ``cache``: a directory where calibration statistics are
    kept and reused by later compiles of the same input and transform (benchmarks)."""
    out = Path(out)
    check_output_dir(out)
    stages = _Stages()
    spec = config.recipe.spec
    with tempfile.TemporaryDirectory(prefix="smoothrot-") as tmp:
        work = Path(tmp)
        tokens = config.calibration_tokens
        if onnx_dir is None:
            onnx_dir = work / "export"
            stages.timed(
                "export", lambda: export_model(resolve_source(model), onnx_dir, ExportConfig())
            )
        store = statistics_store(Path(cache), onnx_dir) if cache is not None else work
        manifest = load_manifest(onnx_dir)
        if spec.weights:  # refuse a group size that fits no layer before any slow work
            check_group_sizes(manifest.dims, config.weights)
        absmax = None
        if config.transform_used.smooths:
            cal0 = store / f"absmax-{tokens}"
            if not (cal0 / "index.json").is_file():
                cal = CalibrationConfig(tokens=tokens, hessian=False)
                stages.timed("calibrate", lambda: calibrate_dir(onnx_dir, cal, cal0))
            absmax = layer_lookup(cal0, manifest, "absmax")
        graph = ir.load(str(onnx_dir / manifest.model_file))
        dumps = work / "dumps"
        passes = exact_passes(config.transform_used, manifest, absmax, config.alpha, config.seed)
        for name, p in passes:
            _run_pass(stages, name, p, graph, dumps, config)
        hessian = None
        transformed = work / "transformed"
        if spec.weights:
            key = f"hessian-{config.transform_used.value}-a{config.alpha}-s{config.seed}-{tokens}"
            cal1 = store / key
            if not (cal1 / "index.json").is_file() or config.tune is not None:
                transformed.mkdir()
                write_model_dir(graph, onnx_dir, manifest, transformed, [])
            if not (cal1 / "index.json").is_file():
                cal = CalibrationConfig(tokens=tokens, hessian=True)
                stages.timed("calibrate_hessians", lambda: calibrate_dir(transformed, cal, cal1))
            hessian = layer_lookup(cal1, manifest, "hessian")
        quant = quant_passes(config, manifest, hessian)
        for name, p in quant:
            _run_pass(stages, name, p, graph, dumps, config)
        tuning = None
        if config.tune is not None:
            tuning = stages.timed("tune", lambda: _tune(graph, transformed, config.tune))
        with atomic_output_dir(out) as result:
            write_model_dir(graph, onnx_dir, manifest, result, stages.rows)
            if dumps.exists():
                shutil.copytree(dumps, result / "dumps")
            layers = [r for _, p in quant if isinstance(p, WeightQuantPass) for r in p.results]
            tune_summary = write_tune_report(result, tuning) if tuning is not None else None
            report = write_report(result, onnx_dir, config, stages.rows, layers, tune_summary)
    assert (out / MANIFEST_NAME).is_file()
    return report


def statistics_store(cache: Path, onnx_dir: Path) -> Path:
    """The folder under ``cache`` for statistics of this export computed by this code: the key
    hashes the export's manifest and smoothrot's compiler and pass sources, so a cache left by
    another version of smoothrot or another export is not reused."""
    h = hashlib.sha256((Path(onnx_dir) / MANIFEST_NAME).read_bytes())
    for package in (Path(__file__).parent, Path(smoothrot.passes.__file__).parent):
        for source in sorted(package.glob("*.py")):
            h.update(source.name.encode() + b"\0" + source.read_bytes())
    return cache / h.hexdigest()[:16]


def _tune(graph: ir.Model, transformed: Path, config: TuneConfig) -> TuneResult:
    """Tune ``graph`` (quantized) against the float graph saved in ``transformed``."""
    manifest = load_manifest(transformed)
    fp = ir.load(str(transformed / manifest.model_file))
    cal = CalibrationConfig(tokens=config.sequences * config.seq, seq=config.seq, hessian=False)
    seqs, _, _ = token_sequences(transformed, cal, None)
    return tune_blocks(graph, fp, manifest, seqs, config)


def _run_pass(stages: _Stages, name: str, p, graph: ir.Model, dumps: Path, config) -> None:
    stages.timed(name, lambda: p(graph))
    if name in config.dump_after:
        (dumps / name).mkdir(parents=True)
        save_model(graph, dumps / name)

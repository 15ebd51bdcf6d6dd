"""The compile pipeline, declared in one place: which passes each recipe runs, in order.

``smoothrot compile --recipe R`` = export (or take an exported directory) → calibrate (if the
recipe smooths) → the recipe's passes → save → prove: the result's logits are compared with
the input model's on a fixed 128-token input and written to ``report.json``.
"""

from __future__ import annotations

import enum
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from smoothrot.compiler.calibrate import CalibrationConfig, calibrate_dir, load_calibration
from smoothrot.compiler.config import ExportConfig
from smoothrot.compiler.corpus import CorpusPart, corpus_part
from smoothrot.compiler.errors import SmoothrotError
from smoothrot.compiler.export import export_model, save_model
from smoothrot.compiler.manifest import MANIFEST_NAME, Manifest, load_manifest
from smoothrot.compiler.outdir import atomic_output_dir, check_output_dir
from smoothrot.compiler.runner import OrtDecoder, load_tokenizer
from smoothrot.compiler.sources import resolve_source
from smoothrot.passes.fold_norm import FoldNormGammaPass
from smoothrot.passes.model_map import Linear, Site
from smoothrot.passes.online_rotation import OnlineRotationPass
from smoothrot.passes.residual_rotation import ResidualRotationPass
from smoothrot.passes.smooth import SmoothConfig, SmoothPass

__all__ = ["CompileConfig", "Recipe", "compile_model", "recipe_passes"]

log = logging.getLogger("smoothrot.pipeline")
DOWN_ONLY = frozenset({Site.DOWN_PROJ})
_COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


class Recipe(enum.Enum):
    FP_SMOOTH = "fp-smooth"  # exact: SmoothQuant scales folded into norms / v_proj / up_proj
    FP_ROTATE = "fp-rotate"  # exact: fused residual (R1) + per-head (R2) + online at down_proj
    FP_HYBRID = "fp-hybrid"  # exact: smoothing first, rotation second, at the same inputs

    @property
    def smooths(self) -> bool:
        return self in (Recipe.FP_SMOOTH, Recipe.FP_HYBRID)


@dataclass(frozen=True)
class CompileConfig:
    recipe: Recipe
    alpha: float = 0.5
    calibration_tokens: int = 4096
    seed: int = 0
    dump_after: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, Recipe):
            raise ValueError(f"recipe must be a Recipe, got {self.recipe!r}")
        SmoothConfig(alpha=self.alpha)  # validates alpha


def recipe_passes(config: CompileConfig, manifest: Manifest, absmax) -> list[tuple[str, Any]]:
    """The full, ordered pass list of a recipe (name, pass)."""
    dims = manifest.dims
    smooth = ("smooth", SmoothPass(dims, absmax, SmoothConfig(alpha=config.alpha)))
    rotate = ("online_rotation", OnlineRotationPass(dims, seed=config.seed))
    if config.recipe is Recipe.FP_SMOOTH:
        return [smooth]
    if config.recipe is Recipe.FP_ROTATE:
        return [
            ("fold_norm_gamma", FoldNormGammaPass(dims)),
            ("residual_rotation", ResidualRotationPass(dims, per_head=True, seed=config.seed)),
            ("online_rotation", OnlineRotationPass(dims, DOWN_ONLY, seed=config.seed)),
        ]
    return [smooth, rotate]  # fp-hybrid: smoothing first, rotation second, same inputs


def _absmax_lookup(calibration: Path, manifest: Manifest):
    stats = load_calibration(calibration)
    module_of = {w: m for m, w in manifest.weights.items()}

    def absmax(lin: Linear) -> np.ndarray:
        if lin.name not in module_of:
            raise SmoothrotError(f"no calibration statistics for weight {lin.name}")
        return np.asarray(stats.for_layer(module_of[lin.name]).absmax)

    return absmax


def _probe_ids(directory: Path) -> np.ndarray:
    ids = load_tokenizer(directory).encode(corpus_part(CorpusPart.EVALUATION)[:4000])
    return np.asarray([ids[:128]], np.int64)


def compile_model(
    out: Path, config: CompileConfig, model: str | None = None, onnx_dir: Path | None = None
) -> dict[str, Any]:
    out = Path(out)
    check_output_dir(out)
    stages: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="smoothrot-") as work:
        t = time.perf_counter()
        if onnx_dir is None:
            onnx_dir = Path(work) / "export"
            export_model(resolve_source(model), onnx_dir, ExportConfig())
            stages.append({"stage": "export", "seconds": round(time.perf_counter() - t, 1)})
        manifest = load_manifest(onnx_dir)
        absmax = None
        if config.recipe.smooths:
            t = time.perf_counter()
            calib = Path(work) / "calibration"
            cal_cfg = CalibrationConfig(tokens=config.calibration_tokens, hessian=False)
            calibrate_dir(onnx_dir, cal_cfg, calib)
            absmax = _absmax_lookup(calib, manifest)
            stages.append({"stage": "calibrate", "seconds": round(time.perf_counter() - t, 1)})
        graph = ir.load(str(onnx_dir / manifest.model_file))
        dumps = Path(work) / "dumps"
        for name, p in recipe_passes(config, manifest, absmax):
            t = time.perf_counter()
            modified = p(graph).modified
            stages.append(
                {"stage": name, "modified": modified, "seconds": round(time.perf_counter() - t, 2)}
            )
            log.info("pass %s: modified=%s in %.2fs", name, modified, stages[-1]["seconds"])
            if name in config.dump_after:
                (dumps / name).mkdir(parents=True)
                save_model(graph, dumps / name)
        with atomic_output_dir(out) as tmp:
            save_model(graph, tmp)
            for f in _COPIED:
                if (onnx_dir / f).is_file():
                    shutil.copy(onnx_dir / f, tmp / f)
            new = replace(manifest, stages=manifest.stages + stages)
            new.save(tmp)
            if dumps.exists():
                shutil.copytree(dumps, tmp / "dumps")
            ids = _probe_ids(onnx_dir)
            ref, _ = OrtDecoder(onnx_dir).forward(ids)
            ours, _ = OrtDecoder(tmp).forward(ids)
            report = {
                "recipe": config.recipe.value,
                "config": {**asdict(config), "recipe": config.recipe.value},
                "exactness": {
                    "tokens": int(ids.shape[1]),
                    "max_abs_logit_diff": float(np.abs(ours - ref).max()),
                },
                "stages": stages,
            }
            (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    assert (out / MANIFEST_NAME).is_file()
    return report

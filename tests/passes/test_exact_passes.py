"""Exact passes leave the logits unchanged: tiny Llama/Mistral/Qwen2 and the real model."""

import shutil

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.calibrate.statistics import calibrate_dir
from smoothrot.compiler.calibrate.store import StatisticsLookup
from smoothrot.compiler.compile import compile_model
from smoothrot.compiler.config import CalibrationConfig, CompileConfig, EvalConfig
from smoothrot.compiler.measure.evaluate import evaluate_dir
from smoothrot.compiler.modeldir.model_dir import save_model
from smoothrot.compiler.pipelines import exact_steps
from smoothrot.compiler.recipes import Recipe, Transform
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.core.pass_infra import PassPreconditionError
from smoothrot.passes.fold_norm import FoldNormGammaPass
from smoothrot.passes.model_map import build_model_map
from smoothrot.passes.online_rotation import ROTATION_MARK, OnlineRotationPass
from smoothrot.passes.residual_rotation import ResidualRotationPass
from smoothrot.passes.smooth import SmoothConfig, SmoothPass
from tests.conftest import TINY_ARCHITECTURES

IDS = np.random.default_rng(1).integers(0, 49152, size=(1, 24))


@pytest.fixture(scope="module")
def tiny_absmax(tiny_export, tmp_path_factory):
    made = {}

    def get(arch):
        if arch not in made:
            out = tmp_path_factory.mktemp(f"cal-{arch}") / "c"
            calibrate_dir(
                tiny_export(arch), CalibrationConfig(64, 32, hessian=False), out, progress=False
            )
            made[arch] = StatisticsLookup(out, load_manifest(tiny_export(arch)), "absmax")
        return made[arch]

    return get


def _apply(src, tmp_path, passes) -> tuple[ir.Model, list[bool], np.ndarray]:
    """Run ``passes`` on a copy of the export in ``src``; return (model, modified, logits)."""
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    model = ir.load(src / "model.onnx")
    modified = [p(model).modified for p in passes]
    (dst / "model.onnx").unlink()
    (dst / "model.onnx.data").unlink()
    save_model(model, dst)
    return model, modified, OrtDecoder(dst).forward(IDS)[0]


def _gammas(model, dims):
    return [
        np.asarray(n.gamma.const_value.numpy())
        for n, _ in build_model_map(model, dims).norm_consumers()
    ]


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_fold_norm_gamma(tiny_export, tmp_path, arch):
    src = tiny_export(arch)
    dims = load_manifest(src).dims
    ref = OrtDecoder(src).forward(IDS)[0]
    model, modified, ours = _apply(
        src, tmp_path, [FoldNormGammaPass(dims), FoldNormGammaPass(dims)]
    )
    assert modified == [True, False]  # idempotent: nothing left to fold
    assert all(np.all(g == 1) for g in _gammas(model, dims))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_smooth(tiny_export, tiny_absmax, tmp_path, arch):
    src = tiny_export(arch)
    dims = load_manifest(src).dims
    ref = OrtDecoder(src).forward(IDS)[0]
    before = _gammas(ir.load(src / "model.onnx"), dims)
    smooth = SmoothPass(dims, tiny_absmax(arch), SmoothConfig(alpha=0.5))
    model, modified, ours = _apply(src, tmp_path, [smooth, smooth])
    assert modified == [True, False]  # the same statistics are never applied twice
    after = _gammas(model, dims)
    assert not np.allclose(before[0], after[0]) and np.allclose(before[-1], after[-1])
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_smooth_without_sites_changes_nothing(tiny_export, tiny_absmax, tmp_path):
    dims = load_manifest(tiny_export("llama")).dims
    p = SmoothPass(dims, tiny_absmax("llama"), SmoothConfig(sites=frozenset()))
    assert p(ir.load(tiny_export("llama") / "model.onnx")).modified is False


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_online_rotation_and_hybrid(tiny_export, tiny_absmax, tmp_path, arch):
    src = tiny_export(arch)
    dims = load_manifest(src).dims
    ref = OrtDecoder(src).forward(IDS)[0]
    passes = [
        SmoothPass(dims, tiny_absmax(arch)),
        OnlineRotationPass(dims),
        OnlineRotationPass(dims),
    ]
    model, modified, ours = _apply(src, tmp_path, passes)
    assert modified == [True, True, False]
    rot = [n for n in model.graph if n.metadata_props.get(ROTATION_MARK) == "online"]
    assert len(rot) == 4 * 4 * dims.layers  # Reshape, MatMul(B), MatMul(Aᵀ), Reshape per site
    # Factored: every rotation MatMul constant is m×m or p×p, never hidden×hidden.
    sizes = {
        n.inputs[1 if n.inputs[1].const_value is not None else 0].const_value.shape[0]
        for n in rot
        if n.op_type == "MatMul"
    }
    assert max(sizes) < dims.hidden
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in Recipe if r.exact])
def test_recipes_are_exact_on_the_default_model(default_export, tmp_path, recipe):
    out = tmp_path / recipe.value
    report = compile_model(out, CompileConfig(recipe=recipe), onnx_dir=default_export)
    assert report["exactness"]["max_abs_logit_diff"] <= 1e-3
    if recipe is Recipe.FP_HYBRID:  # perplexity identical to 3 decimals
        ref = evaluate_dir(default_export, EvalConfig(), progress=False)["ppl"]
        ours = evaluate_dir(out, EvalConfig(), progress=False)["ppl"]
        assert round(ours, 3) == round(ref, 3)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_residual_rotation(tiny_export, tmp_path, arch):
    src = tiny_export(arch)
    dims = load_manifest(src).dims
    ref = OrtDecoder(src).forward(IDS)[0]
    rot = ResidualRotationPass(dims)
    model, modified, ours = _apply(src, tmp_path, [FoldNormGammaPass(dims), rot, rot])
    assert modified == [True, True, False]
    assert not any(n.metadata_props.get(ROTATION_MARK) for n in model.graph)  # nothing inserted
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_residual_rotation_refuses_unfolded_norms(tiny_export):
    dims = load_manifest(tiny_export("llama")).dims
    with pytest.raises(PassPreconditionError, match="needs folded norms .* fold_norm_gamma"):
        ResidualRotationPass(dims)(ir.load(tiny_export("llama") / "model.onnx"))


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("transform", list(Transform))
def test_every_transform_of_the_pipeline_is_exact(
    tiny_export, tiny_absmax, tmp_path, arch, transform
):
    """The exact stage each quantized recipe can use, pass list taken from the pipeline itself."""
    src = tiny_export(arch)
    manifest = load_manifest(src)
    passes = exact_steps(transform, manifest.dims, tiny_absmax(arch), 0.5, 0)
    _, modified, ours = _apply(src, tmp_path, passes)
    assert all(modified) and len(modified) == {"none": 0, "smooth": 1}.get(
        transform.value, len(modified)
    )
    np.testing.assert_allclose(ours, OrtDecoder(src).forward(IDS)[0], atol=1e-4, rtol=0)

"""FoldNormGammaPass: γ folded into the MatMuls it feeds, logits unchanged (tiny models)."""

import shutil

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.modeldir.model_dir import save_model
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.passes.fold_norm import FoldNormGammaPass
from smoothrot.passes.model_map import build_model_map
from tests.conftest import TINY_ARCHITECTURES

IDS = np.random.default_rng(1).integers(0, 49152, size=(1, 24))


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

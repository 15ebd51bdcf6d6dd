"""FoldNormGammaPass: γ folded into the MatMuls it feeds, logits unchanged (tiny models); left
alone where a post-norm blocks the fused residual rotation that needs it (Gemma 3)."""

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.passes.fold_norm import FoldNormGammaPass
from tests.conftest import TINY_ARCHITECTURES
from tests.helpers import norm_gammas, run_passes

IDS = np.random.default_rng(1).integers(0, 49152, size=(1, 24))


FOLDED = [a for a in TINY_ARCHITECTURES if a != "gemma3"]


@pytest.mark.parametrize("arch", FOLDED)
def test_fold_norm_gamma(tiny_export, tmp_path, arch):
    src = tiny_export(arch)
    dims = load_manifest(src).dims
    ref = OrtDecoder(src).forward(IDS)[0]
    passes = [FoldNormGammaPass(dims), FoldNormGammaPass(dims)]
    model, modified, ours = run_passes(src, tmp_path, passes, IDS)
    assert modified == [True, False]  # idempotent: nothing left to fold
    assert all(np.all(g == 1) for g in norm_gammas(model, dims))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_nothing_is_folded_where_the_residual_rotation_is_blocked(tiny_export):
    src = tiny_export("gemma3")
    dims = load_manifest(src).dims
    model = ir.load(src / "model.onnx")
    before = norm_gammas(model, dims)
    report = FoldNormGammaPass(dims)(model)
    assert not report.modified and report.details["not_needed"].startswith("layer 0's post-norm")
    assert all(np.array_equal(a, b) for a, b in zip(before, norm_gammas(model, dims), strict=True))
    assert any(np.any(g != 1) for g in before)

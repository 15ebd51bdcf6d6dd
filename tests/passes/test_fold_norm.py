"""FoldNormGammaPass: γ folded into the MatMuls it feeds, logits unchanged (tiny models)."""

import numpy as np
import pytest

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.passes.fold_norm import FoldNormGammaPass
from tests.conftest import TINY_ARCHITECTURES
from tests.helpers import norm_gammas, run_passes

IDS = np.random.default_rng(1).integers(0, 49152, size=(1, 24))


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_fold_norm_gamma(tiny_export, tmp_path, arch):
    src = tiny_export(arch)
    dims = load_manifest(src).dims
    ref = OrtDecoder(src).forward(IDS)[0]
    passes = [FoldNormGammaPass(dims), FoldNormGammaPass(dims)]
    model, modified, ours = run_passes(src, tmp_path, passes, IDS)
    assert modified == [True, False]  # idempotent: nothing left to fold
    assert all(np.all(g == 1) for g in norm_gammas(model, dims))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

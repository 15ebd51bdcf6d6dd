"""SmoothPass: SmoothQuant scales folded into norms / v_proj / up_proj, logits unchanged."""

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.passes.smooth import SmoothConfig, SmoothPass
from tests.conftest import TINY_ARCHITECTURES
from tests.helpers import norm_gammas, run_passes

IDS = np.random.default_rng(1).integers(0, 49152, size=(1, 24))


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_smooth(tiny_export, tiny_absmax, tmp_path, arch):
    src = tiny_export(arch)
    dims = load_manifest(src).dims
    ref = OrtDecoder(src).forward(IDS)[0]
    before = norm_gammas(ir.load(src / "model.onnx"), dims)
    smooth = SmoothPass(dims, tiny_absmax(arch), SmoothConfig(alpha=0.5))
    model, modified, ours = run_passes(src, tmp_path, [smooth, smooth], IDS)
    assert modified == [True, False]  # the same statistics are never applied twice
    after = norm_gammas(model, dims)
    assert not np.allclose(before[0], after[0]) and np.allclose(before[-1], after[-1])
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_smooth_without_sites_changes_nothing(tiny_export, tiny_absmax, tmp_path):
    dims = load_manifest(tiny_export("llama")).dims
    p = SmoothPass(dims, tiny_absmax("llama"), SmoothConfig(sites=frozenset()))
    assert p(ir.load(tiny_export("llama") / "model.onnx")).modified is False

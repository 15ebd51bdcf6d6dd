"""ResidualRotationPass: fused R1 + per-head R2, logits unchanged; unfolded norms refused."""

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.core.pass_infra import PassPreconditionError
from smoothrot.passes.fold_norm import FoldNormGammaPass
from smoothrot.passes.online_rotation import ROTATION_MARK
from smoothrot.passes.residual_rotation import ResidualRotationPass
from tests.conftest import TINY_ARCHITECTURES
from tests.helpers import run_passes

IDS = np.random.default_rng(1).integers(0, 49152, size=(1, 24))


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_residual_rotation(tiny_export, tmp_path, arch):
    src = tiny_export(arch)
    dims = load_manifest(src).dims
    ref = OrtDecoder(src).forward(IDS)[0]
    rot = ResidualRotationPass(dims)
    model, modified, ours = run_passes(src, tmp_path, [FoldNormGammaPass(dims), rot, rot], IDS)
    assert modified == [True, True, False]
    assert not any(n.metadata_props.get(ROTATION_MARK) for n in model.graph)  # nothing inserted
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_residual_rotation_refuses_unfolded_norms(tiny_export):
    dims = load_manifest(tiny_export("llama")).dims
    with pytest.raises(PassPreconditionError, match="needs folded norms .* fold_norm_gamma"):
        ResidualRotationPass(dims)(ir.load(tiny_export("llama") / "model.onnx"))

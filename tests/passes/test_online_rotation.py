"""OnlineRotationPass: Kronecker-factored online Hadamard rotations, logits unchanged."""

import numpy as np
import pytest

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.passes.online_rotation import ROTATION_MARK, OnlineRotationPass
from smoothrot.passes.smooth import SmoothPass
from tests.conftest import TINY_ARCHITECTURES
from tests.helpers import run_passes

IDS = np.random.default_rng(1).integers(0, 49152, size=(1, 24))


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
    model, modified, ours = run_passes(src, tmp_path, passes, IDS)
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

"""ResidualRotationPass: fused R1 + per-head R2, logits unchanged; unfolded norms refused."""

import shutil

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.modeldir.model_dir import save_model
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.core.pass_infra import PassPreconditionError
from smoothrot.passes.fold_norm import FoldNormGammaPass
from smoothrot.passes.online_rotation import ROTATION_MARK
from smoothrot.passes.residual_rotation import ResidualRotationPass
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

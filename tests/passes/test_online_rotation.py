"""OnlineRotationPass: Kronecker-factored online Hadamard rotations, logits unchanged."""

import shutil

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.calibrate.statistics import calibrate_dir
from smoothrot.compiler.calibrate.store import StatisticsLookup
from smoothrot.compiler.config import CalibrationConfig
from smoothrot.compiler.modeldir.model_dir import save_model
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.passes.online_rotation import ROTATION_MARK, OnlineRotationPass
from smoothrot.passes.smooth import SmoothPass
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

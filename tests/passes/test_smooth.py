"""SmoothPass: SmoothQuant scales folded into norms / v_proj / up_proj, logits unchanged."""

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
from smoothrot.passes.model_map import build_model_map
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

"""compiler/pipelines.py: the exact steps each transform declares leave the logits unchanged."""

import shutil

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.calibrate.statistics import calibrate_dir
from smoothrot.compiler.calibrate.store import StatisticsLookup
from smoothrot.compiler.config import CalibrationConfig
from smoothrot.compiler.modeldir.model_dir import save_model
from smoothrot.compiler.pipelines import exact_steps
from smoothrot.compiler.recipes import Transform
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
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

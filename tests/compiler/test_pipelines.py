"""compiler/pipelines.py: the exact steps each transform declares leave the logits unchanged."""

import numpy as np
import pytest

from smoothrot.compiler.pipelines import exact_step_names, exact_steps
from smoothrot.compiler.recipes import Transform
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.passes.fold_norm import FoldNormGammaPass
from tests.conftest import TINY_ARCHITECTURES
from tests.helpers import run_passes

IDS = np.random.default_rng(1).integers(0, 49152, size=(1, 24))


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("transform", list(Transform))
def test_every_transform_of_the_pipeline_is_exact(
    tiny_export, tiny_absmax, tmp_path, arch, transform
):
    """The exact stage each quantized recipe can use, pass list taken from the pipeline itself."""
    src = tiny_export(arch)
    manifest = load_manifest(src)
    passes = exact_steps(transform, manifest.dims, tiny_absmax(arch), 0.5, 0)
    _, modified, ours = run_passes(src, tmp_path, passes, IDS)
    assert len(modified) == {"none": 0, "smooth": 1}.get(transform.value, len(modified))
    # Gemma 3's post-norms block the fused R1: its γ stays in the norms, nothing to fold
    blocked = arch == "gemma3"
    names = exact_step_names(transform)
    assert modified == [not (blocked and name == FoldNormGammaPass.name) for name in names]
    np.testing.assert_allclose(ours, OrtDecoder(src).forward(IDS)[0], atol=1e-4, rtol=0)

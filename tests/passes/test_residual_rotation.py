"""ResidualRotationPass: fused R1 + per-head R2, logits unchanged; unfolded norms refused; R1
blocked by a post-norm (Gemma 3) is reported and the rotation it would have given is online."""

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.manifest import load_manifest
from smoothrot.core.pass_infra import PassPreconditionError
from smoothrot.passes.fold_norm import FoldNormGammaPass
from smoothrot.passes.model_map import build_model_map
from smoothrot.passes.online_rotation import ROTATION_MARK, OnlineRotationPass
from smoothrot.passes.residual_rotation import RESIDUAL_ROTATION_MARK, ResidualRotationPass
from tests.conftest import TINY_ARCHITECTURES
from tests.helpers import run_passes, save_copy

IDS = np.random.default_rng(1).integers(0, 49152, size=(1, 24))


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_residual_rotation(tiny_export, tmp_path, arch):
    src = tiny_export(arch)
    dims = load_manifest(src).dims
    ref = OrtDecoder(src).forward(IDS)[0]
    rot = ResidualRotationPass(dims)
    model, modified, ours = run_passes(src, tmp_path, [FoldNormGammaPass(dims), rot, rot], IDS)
    assert modified == [arch != "gemma3", True, False]  # Gemma 3: R1 blocked, nothing folded
    assert not any(n.metadata_props.get(ROTATION_MARK) for n in model.graph)  # nothing inserted
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_residual_rotation_refuses_unfolded_norms(tiny_export):
    dims = load_manifest(tiny_export("llama")).dims
    with pytest.raises(PassPreconditionError, match="needs folded norms .* fold_norm_gamma"):
        ResidualRotationPass(dims)(ir.load(tiny_export("llama") / "model.onnx"))


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_post_norms_block_r1_and_online_rotations_take_its_place(tiny_export, tmp_path, arch):
    src = tiny_export(arch)
    dims = load_manifest(src).dims
    ref = OrtDecoder(src).forward(IDS)[0]
    model = ir.load(src / "model.onnx")
    FoldNormGammaPass(dims)(model)
    report = ResidualRotationPass(dims)(model)
    embedding = build_model_map(model, dims).embedding.inputs[0].const_value.numpy()
    if arch == "gemma3":
        gamma = build_model_map(model, dims).layers[0].post_attn_norm.gamma.name
        assert report.details["r1_blocked"].startswith(f"layer 0's post-norm (γ {gamma!r})")
        assert model.metadata_props[RESIDUAL_ROTATION_MARK] == "r2"
        original = ir.load(src / "model.onnx")
        assert np.array_equal(embedding, build_model_map(original, dims).embedding.inputs[0]
                              .const_value.numpy())  # fmt: skip
    else:
        assert "r1_blocked" not in report.details
        assert model.metadata_props[RESIDUAL_ROTATION_MARK] == "r1+r2"
    rotated = OnlineRotationPass(dims, frozenset(), residual_fallback=True)(model)
    tags = rotated.details["rotated"]
    expected = [f"layers.{i}.{s}" for i in range(dims.layers) for s in ("qkv", "gate_up")]
    assert tags == (expected if arch == "gemma3" else [])
    ours = OrtDecoder(save_copy(model, src, tmp_path / "m")).forward(IDS)[0]
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

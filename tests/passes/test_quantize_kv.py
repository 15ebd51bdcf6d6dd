"""KVQuantPass: the KV cache quantized except the kept prompt positions (BiSup's P)."""

import numpy as np
import onnx_ir as ir

from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.core.hadamard import rotation_factors
from smoothrot.core.qdq import QuantBits, dynamic_qdq_reference
from smoothrot.passes.quantize_kv import KV_PREFIX_INPUT, KVQuantConfig, KVQuantPass
from tests.helpers import save_copy

IDS = np.random.default_rng(2).integers(0, 49152, size=(1, 20))


def test_kv_pass_keeps_the_prompt_positions_and_quantizes_the_rest(tiny_hessian, tmp_path):
    src, manifest, _ = tiny_hessian
    model = ir.load(src / "model.onnx")
    assert KVQuantPass(manifest.dims, KVQuantConfig(QuantBits.INT4, keep_prefix=8))(model).modified
    assert not KVQuantPass(manifest.dims)(model).modified
    decoder = OrtDecoder(save_copy(model, src, tmp_path / "m"))
    fp_logits, fp_present = OrtDecoder(src).forward(IDS)
    logits, present = decoder.forward(IDS)
    key0, fp_key0 = present[0], fp_present[0]  # layer 0 key: computed before any quantization
    np.testing.assert_array_equal(key0[:, :, :8], fp_key0[:, :, :8])
    h = rotation_factors(manifest.dims.head_dim).dense.astype(np.float32)
    rotated = dynamic_qdq_reference(fp_key0[:, :, 8:] @ h, QuantBits.INT4) @ h.T
    np.testing.assert_allclose(key0[:, :, 8:], rotated, atol=1e-5)
    assert not np.allclose(key0[:, :, 8:], fp_key0[:, :, 8:], atol=1e-3)  # really quantized
    assert not np.allclose(logits, fp_logits, atol=1e-3)
    # P is a runtime input with the compiled default: a larger P keeps the whole prompt.
    feeds = {
        "input_ids": IDS,
        "attention_mask": np.ones_like(IDS),
        "position_ids": np.arange(IDS.shape[1])[None],
        KV_PREFIX_INPUT: np.array(IDS.shape[1], np.int64),
    }
    feeds.update(zip(manifest.past_names, decoder.empty_cache(), strict=True))
    kept = decoder.session.run(None, feeds)[0]
    np.testing.assert_allclose(kept, fp_logits, atol=1e-5)

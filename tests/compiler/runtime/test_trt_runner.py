"""The TensorRT runner: clean refusals on the CPU; on a GPU with TensorRT, the engine of a tiny
model against ONNX Runtime on the same TensorRT-form graph (greedy tokens and logits)."""

import numpy as np
import pytest
import torch

from smoothrot.compiler.config import BuildConfig
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.compiler.targets.trt.build import build_model
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.tensorrt import load_trt
from tests.helpers import SMALL_ENGINE, compile_rtn
from tests.tools.test_cli import _fails_cleanly


def test_trt_backend_refuses_cleanly_without_gpu_or_engine(capsys, tiny_export, tmp_path):
    fp32 = str(tiny_export("llama"))
    _fails_cleanly(capsys, ["generate", fp32, "--prompt", "Hi", "--backend", "trt"], "engine.trt")
    (tmp_path / "engine.trt").write_bytes(b"")  # an engine file, but no GPU here
    (tmp_path / "build.json").write_text('{"backend": "tensorrt-rtx"}')
    for f in ("model.onnx", "model.onnx.data", "smoothrot.json"):
        (tmp_path / f).symlink_to(tiny_export("llama") / f)
    if not torch.cuda.is_available():
        argv = ["bench", str(tmp_path), "--backend", "trt", "--runs", "1"]
        _fails_cleanly(capsys, argv, "needs an NVIDIA GPU")
    _fails_cleanly(capsys, ["eval", fp32, "--backend", "trt", "--kv-prefix", "4"], "ORT option")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)")
def test_engine_matches_onnx_runtime_on_a_gpu(tiny_export, tmp_path):
    from smoothrot.compiler.runtime.trt_runner import TrtDecoder

    try:
        backend, _ = load_trt()
    except SmoothrotError as exc:
        pytest.skip(str(exc))
    qdq = compile_rtn(tiny_export("llama"), tmp_path / "qdq", *_w4a8())
    built = tmp_path / "trt"
    build_model(qdq, built, BuildConfig(backend, SMALL_ENGINE, evaluate=False))
    prompt = [1, 504, 3287, 8925, 9, 253, 30, 2478]
    ort_decoder, trt_decoder = OrtDecoder(built, optimize=False), TrtDecoder(built)
    assert trt_decoder.generate(prompt, 32) == ort_decoder.generate(prompt, 32)
    ref, _ = ort_decoder.forward(np.array([prompt]))
    got, _ = trt_decoder.forward(np.array([prompt]))
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() >= 0.999


def _w4a8():
    from smoothrot.compiler.recipes import Recipe
    from smoothrot.passes.quantize_weights import GroupingMode

    return Recipe.W4A8, GroupingMode.ADADIM

"""Shared fixtures: the real default model (exported once per session) and tiny random models.

Set ``SMOOTHROT_TEST_CACHE=/some/dir`` to keep the default model's export between runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from smoothrot.compiler.config import ExportConfig
from smoothrot.compiler.export.exporter import export_model
from smoothrot.compiler.modeldir.sources import load_torch_model, resolve_source
from smoothrot.core.manifest import MANIFEST_NAME

TINY_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3")


@pytest.fixture(scope="session")
def default_source():
    return resolve_source(None)


@pytest.fixture(scope="session")
def default_torch(default_source):
    """(model, tokenizer) of the packaged SmolLM2-135M-Instruct, fp32."""
    return load_torch_model(default_source)


def export_once(tmp_path_factory, source, name: str) -> Path:
    """``source`` exported to ONNX (fp32) as ``name``, in ``$SMOOTHROT_TEST_CACHE`` if set
    (kept between runs) or in this session's temporary folder."""
    cache = os.environ.get("SMOOTHROT_TEST_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp(name)
    out = root / name
    if not (out / MANIFEST_NAME).is_file():
        export_model(source, out, ExportConfig())
    return out


@pytest.fixture(scope="session")
def default_export(tmp_path_factory, default_source) -> Path:
    """The default model exported to ONNX (fp32), shared by the whole test session."""
    return export_once(tmp_path_factory, default_source, "smollm2-fp32")


def _tiny_config(arch: str, layers: int = 2):
    from transformers import (
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    common = dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,  # the default model's tokenizer is reused
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=256)
    if arch == "qwen2":
        return Qwen2Config(**common)  # q/k/v carry biases
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=32)  # per-head q/k norms; head_dim != hidden/heads
    if arch == "gemma3":
        # post-norms, q/k norms, (1 + γ) norms, GeGLU, scaled embeddings, one KV head, sliding
        # and global layers with their own RoPE bases
        kinds = ["sliding_attention", "full_attention"] * layers
        return Gemma3TextConfig(
            **{**common, "num_key_value_heads": 1}, head_dim=32, query_pre_attn_scalar=32,
            sliding_window=16, layer_types=kinds[:layers],
        )  # fmt: skip
    if arch == "phi3":  # fused qkv_proj and gate_up_proj, split by the export
        return Phi3Config(**common, sliding_window=256, pad_token_id=0)
    raise ValueError(arch)


@pytest.fixture(scope="session")
def default_tokenizer(default_torch):
    return default_torch[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_tokenizer):
    """Factory: a tiny random HF model directory of the given architecture and depth (cached)."""
    made: dict[tuple[str, int], Path] = {}

    def make(arch: str, layers: int = 2) -> Path:
        if (arch, layers) not in made:
            from transformers import AutoModelForCausalLM

            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(_tiny_config(arch, layers))
            # Random init is near-zero; larger norms weights make the numerical checks bite.
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "norm" in name:
                        p.uniform_(0.5, 1.5)
                    elif name.endswith("bias"):
                        p.normal_(0, 0.1)
            path = tmp_path_factory.mktemp(f"tiny-{arch}-{layers}")
            model.save_pretrained(path)
            default_tokenizer.save_pretrained(path)
            made[arch, layers] = path
        return made[arch, layers]

    return make


@pytest.fixture(scope="session")
def rtx():
    """The TensorRT-RTX module (skips without it, fails where CI requires it)."""
    from smoothrot.compiler.config import TrtBackend
    from smoothrot.core.errors import SmoothrotError
    from smoothrot.core.tensorrt import load_trt

    try:
        return load_trt(TrtBackend.TENSORRT_RTX)[1]
    except SmoothrotError as exc:
        if os.environ.get("SMOOTHROT_REQUIRE_TRT_RTX") == "1":
            pytest.fail(f"TensorRT-RTX is required here: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_absmax(tiny_export, tmp_path_factory):
    """Factory: abs-max calibration statistics of a tiny export (a lookup per Linear)."""
    from smoothrot.compiler.calibrate.statistics import calibrate_dir
    from smoothrot.compiler.calibrate.store import StatisticsLookup
    from smoothrot.compiler.config import CalibrationConfig
    from smoothrot.core.manifest import load_manifest

    made = {}

    def get(arch):
        if arch not in made:
            out = tmp_path_factory.mktemp(f"cal-{arch}") / "c"
            cal = CalibrationConfig(64, 32, hessian=False)
            calibrate_dir(tiny_export(arch), cal, out, progress=False)
            made[arch] = StatisticsLookup(out, load_manifest(tiny_export(arch)), "absmax")
        return made[arch]

    return get


@pytest.fixture(scope="session")
def tiny_hessian(tiny_export, tmp_path_factory):
    """(export dir, manifest, Hessian lookup) of the tiny Llama."""
    from smoothrot.compiler.calibrate.statistics import calibrate_dir
    from smoothrot.compiler.calibrate.store import StatisticsLookup
    from smoothrot.compiler.config import CalibrationConfig
    from smoothrot.core.manifest import load_manifest

    src = tiny_export("llama")
    cal = tmp_path_factory.mktemp("cal-q") / "c"
    calibrate_dir(src, CalibrationConfig(128, 32, hessian=True), cal, progress=False)
    manifest = load_manifest(src)
    return src, manifest, StatisticsLookup(cal, manifest, "hessian")


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_model_dir):
    """Factory: a tiny model exported to ONNX (cached per architecture and depth)."""
    made: dict[tuple[str, int], Path] = {}

    def make(arch: str, layers: int = 2) -> Path:
        if (arch, layers) not in made:
            out = tmp_path_factory.mktemp(f"tiny-{arch}-{layers}-onnx") / "model"
            export_model(resolve_source(tiny_model_dir(arch, layers)), out, ExportConfig())
            made[arch, layers] = out
        return made[arch, layers]

    return make

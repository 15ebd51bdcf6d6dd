import json

import pytest

from smoothrot.compiler.modeldir.sources import SourceKind, resolve_source
from smoothrot.core.errors import SmoothrotError


def test_default_model_is_the_packaged_smollm2(default_source):
    assert default_source.kind is SourceKind.DEFAULT
    assert default_source.architecture == "llama"
    assert default_source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_hf_directory_of_each_supported_architecture(tiny_model_dir, arch):
    source = resolve_source(tiny_model_dir(arch))
    assert (source.kind, source.architecture) == (SourceKind.HF_DIR, arch)


def test_missing_path(tmp_path):
    with pytest.raises(SmoothrotError, match="does not exist"):
        resolve_source(tmp_path / "nope")


def test_directory_without_config(tmp_path):
    with pytest.raises(SmoothrotError, match="not a Hugging Face model directory"):
        resolve_source(tmp_path)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(SmoothrotError, match="unsupported architecture 'gpt2'"):
        resolve_source(tmp_path)


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SmoothrotError, match="has no weights"):
        resolve_source(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0001])
def test_truncated_gguf(tmp_path, default_source, keep):
    data = default_source.path.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SmoothrotError, match="GGUF|truncated"):
        resolve_source(bad)


def test_garbage_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file" * 64)
    with pytest.raises(SmoothrotError, match="not a readable GGUF"):
        resolve_source(bad)


def test_file_that_is_neither(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(SmoothrotError, match="neither a model directory nor a .gguf"):
        resolve_source(f)

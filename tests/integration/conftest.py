"""End-to-end tests on the real models (SmolLM2-135M-Instruct, the default; Gemma 3 270M): all
marked ``slow``. ``SMOOTHROT_TEST_CACHE=/some/dir`` keeps their exports between runs."""

from pathlib import Path

import pytest

from smoothrot.compiler.modeldir.sources import load_torch_model, resolve_source
from tests.conftest import export_once

GEMMA3 = "gemma3-270m"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in item.nodeid:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def gemma_source():
    return resolve_source(GEMMA3)


@pytest.fixture(scope="session")
def gemma_export(tmp_path_factory, gemma_source) -> Path:
    """Gemma 3 270M (the packaged GGUF) exported to ONNX (fp32), once per session."""
    return export_once(tmp_path_factory, gemma_source, "gemma3-270m-fp32")


@pytest.fixture(scope="session")
def gemma_torch(gemma_source):
    """(model, tokenizer) of Gemma 3 270M in transformers, fp32."""
    return load_torch_model(gemma_source)

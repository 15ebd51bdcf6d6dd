"""End-to-end tests on the real default model (SmolLM2-135M-Instruct): all marked ``slow``."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in item.nodeid:
            item.add_marker(pytest.mark.slow)

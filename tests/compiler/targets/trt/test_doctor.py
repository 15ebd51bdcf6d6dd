"""`smoothrot doctor --trt` on a machine with TensorRT >= 10.9 and a GPU: every AOT plugin,
built into a real engine from its ONNX node, matches the numpy reference."""

import pytest

from smoothrot.compiler.targets.trt.doctor import check_plugins, environment

MISSING = environment().missing_for_plugins()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)}"),
]


def test_every_plugin_engine_matches_the_reference():
    checks = check_plugins()
    assert len(checks) == 2 * 5 * 3  # activation types x plugin cases x row counts
    failed = [c.line() for c in checks if not c.passed]
    assert not failed, "\n".join(failed)

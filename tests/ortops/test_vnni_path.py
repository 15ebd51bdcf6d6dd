"""The int8 GEMV kernels' VNNI path gives the AVX2 path's integers: both builds, same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smoothrot.ortops.library import library_path
from smoothrot.ortops.spec import OP_TYPE_PER_IC, OP_TYPE_PER_OC, pack_per_ic
from tests.ortops.test_matmul_int4_per_ic import _model, _session

AVX2_ONLY = "-mno-avxvnni -mno-avx512vnni"


def _has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx_vnni" in flags or "avx512_vnni" in flags


def _outputs(cases) -> list[np.ndarray]:
    out = []
    for k, n, group, op_type in cases:
        rng = np.random.default_rng(k + n)
        q = rng.integers(-8, 8, size=(k, n))
        per_oc = op_type == OP_TYPE_PER_OC
        rows, cols = (k // group, n) if per_oc else (k, n // group)
        scale = (rng.random((rows, cols)) * 0.02 + 0.001).astype(np.float32)
        # Each block of 32 quantizes its largest activation to +-127, so the widest sums occur.
        a = rng.standard_normal((1, k)).astype(np.float32)
        model = _model(k, n, group, 4, op_type, B=pack_per_ic(q), S=np.ascontiguousarray(scale.T))
        out.append(_session(model, 1).run(None, {"A": a})[0])
    return out


@pytest.mark.skipif(not _has_vnni(), reason="this CPU has no VNNI: only the AVX2 path exists")
def test_vnni_and_avx2_builds_agree_exactly(built, monkeypatch) -> None:
    cases = [
        (576, 45, 64, OP_TYPE_PER_OC),
        (1536, 64, 128, OP_TYPE_PER_OC),
        (576, 96, 32, OP_TYPE_PER_IC),
        (1000, 96, 32, OP_TYPE_PER_IC),  # ragged K: the tail block
    ]
    native_lib = library_path(build=True)
    native = _outputs(cases)
    monkeypatch.setenv("SMOOTHROT_ORTOPS_CXXFLAGS", AVX2_ONLY)
    assert library_path(build=True) != native_lib  # a second build, not the cached one
    avx2 = _outputs(cases)
    for x, y in zip(native, avx2, strict=True):
        np.testing.assert_array_equal(x, y)

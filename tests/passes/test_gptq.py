"""GPTQ's fast path (float32 GEMMs, the triangular-inverse factor) against the float64
reference: the same factor to float32 precision, the same output error to within a percent,
both far below round-to-nearest; float32 output errors equal float64 ones to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest

from smoothrot.core.int4 import Grouping, output_error, quantize_rtn
from smoothrot.passes.gptq import (
    damping,
    gptq,
    inverse_cholesky,
    undamped_error,
)


def _hessian(k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4 * k, k)) * rng.uniform(0.1, 5.0, k)  # uneven channel scales
    x[:, :3] *= 30  # outlier channels
    return (x.T @ x).astype(np.float32)


def test_fast_factor_equals_the_reference():
    h = _hessian(700)  # > 256: the triangular inverse recurses
    u_ref, dead_ref = inverse_cholesky(h, 0.01)
    u_fast, dead_fast = inverse_cholesky(h, 0.01, fast=True)
    assert u_fast.dtype == np.float32 and u_ref.dtype == np.float64
    np.testing.assert_array_equal(dead_ref, dead_fast)
    assert np.allclose(np.triu(u_fast), u_fast)  # upper triangular
    rel = np.linalg.norm(u_fast - u_ref) / np.linalg.norm(u_ref)
    assert rel < 1e-4, rel


def test_dead_channels_survive_the_fast_factor():
    h = _hessian(300)
    h[5, :] = h[:, 5] = 0.0
    u, dead = inverse_cholesky(h, 0.01, fast=True)
    assert dead[5] and dead.sum() == 1 and np.isfinite(u).all()


@pytest.mark.parametrize("grouping", [Grouping.PER_OC, Grouping.PER_IC])
def test_fast_gptq_matches_the_reference_error(grouping):
    rng = np.random.default_rng(1)
    k, n = 512, 256
    b = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    h = _hessian(k, 2)
    ref = gptq(b, h, grouping, 64, 1.0)
    fast = gptq(b, h, grouping, 64, 1.0, factor=inverse_cholesky(h, 0.01, fast=True))
    err = {
        name: output_error(qw.dequantize() - b, h.astype(np.float64)).sum()
        for name, qw in (("ref", ref), ("fast", fast), ("rtn", quantize_rtn(b, grouping, 64)))
    }
    assert abs(err["fast"] - err["ref"]) < 0.01 * err["ref"], err
    assert err["ref"] < 0.9 * err["rtn"], err


def test_float32_output_error_equals_float64():
    rng = np.random.default_rng(3)
    h = _hessian(400)
    d = (rng.standard_normal((400, 90)) * 1e-2).astype(np.float32)
    e32 = output_error(d, h)
    e64 = output_error(d, h.astype(np.float64))
    assert e32.dtype == np.float64
    np.testing.assert_allclose(e32, e64, rtol=1e-5)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("grouping", [Grouping.PER_OC, Grouping.PER_IC])
def test_gptq_running_error_is_the_output_error(grouping, fast):
    """GPTQ's own ‖E‖², less the damping, equals tr(ΔBᵀHΔB): the large-Linear path takes its
    AdaDim errors from it instead of another K²N product (a dead channel included)."""
    rng = np.random.default_rng(4)
    k, n = 384, 160
    b = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    h = _hessian(k, 5)
    h[7, :] = h[:, 7] = 0.0
    factor = inverse_cholesky(h, 0.01, fast=fast)
    damped = np.zeros(n)
    qw = gptq(b, h, grouping, 32, 0.9, 0.01, factor, errors=damped)
    got = undamped_error(qw, b, damped, *damping(h, 0.01))
    want = output_error(qw.dequantize() - b, h.astype(np.float64)).sum()
    assert abs(got - want) < 1e-4 * want, (got, want)
    assert damped.sum() > want  # the damping term is really taken off


def test_sub_blocked_fast_gptq_stays_gptq():
    """The fast factor's GPTQ (sub-blocks of 16 rows updated by GEMMs) gives the reference's
    error to a percent with per-OC groups larger than a block of rows."""
    rng = np.random.default_rng(6)
    k, n = 512, 128
    b = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    h = _hessian(k, 7)
    ref = gptq(b, h, Grouping.PER_OC, 256, 1.0)
    fast = gptq(b, h, Grouping.PER_OC, 256, 1.0, factor=inverse_cholesky(h, 0.01, fast=True))
    err = [output_error(q.dequantize() - b, h.astype(np.float64)).sum() for q in (ref, fast)]
    assert abs(err[1] - err[0]) < 0.01 * err[0], err

"""Rotations applied through their Kronecker factors equal the dense rotation."""

import numpy as np
import pytest

from smoothrot.core.hadamard import rotation_factors


@pytest.mark.parametrize("n", [2048, 3072, 14336])
def test_factored_products_equal_the_dense_rotation(n):
    """Large rotations are applied through their Kronecker factors (n·(m+p) per column instead
    of n²): the same matrix product as the dense R to float64 rounding, on rows and columns."""
    f = rotation_factors(n)
    rng = np.random.default_rng(n)
    w, v = rng.standard_normal((n, 9)), rng.standard_normal((5, n))
    dense = f.dense
    np.testing.assert_allclose(f.transpose_times(w), dense.T @ w, atol=1e-12)
    np.testing.assert_allclose(f.times(v), v @ dense, atol=1e-12)
    np.testing.assert_allclose(f.times(v[0]), v[0] @ dense, atol=1e-12)

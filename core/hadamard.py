"""Hadamard matrices for online rotations, as Kronecker factors ``H_m ⊗ H_2^k``.

``rotation_factors(n)`` returns ``(A, B)`` with ``A`` of size ``m`` and ``B`` of size ``2^k``,
``m · 2^k = n``, both orthogonal (normalized), so ``R = A ⊗ B`` is an orthogonal ``n × n``
matrix applied in O(n·(m + 2^k)) instead of O(n²). ``B`` is a Sylvester Hadamard matrix; ``A``
is 1×1, or a Paley Hadamard matrix (Paley I: order ``q+1`` for a prime ``q ≡ 3 mod 4``;
Paley II: order ``2(q+1)`` for a prime ``q ≡ 1 mod 4``) times a Sylvester factor. When no
Hadamard matrix of the needed odd part is constructible, ``A`` is a fixed random orthogonal
matrix (seeded) and ``RotationFactors.hadamard`` is False, so callers can report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "FACTORED_MIN",
    "MAX_HADAMARD_FACTOR",
    "RotationFactors",
    "hadamard",
    "rotation_factors",
]

# A non-power-of-two Hadamard factor larger than this would make the online rotation cost
# approach a dense n×n MatMul; past it we use a random orthogonal factor of the odd part.
MAX_HADAMARD_FACTOR = 256
# From this size on, weights are rotated through the factors (``n·(m + p)`` multiply-adds per
# column, not ``n²``); smaller rotations keep the dense product (and its exact bits).
FACTORED_MIN = 2048


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, int(q**0.5) + 1))


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _jacobsthal(q: int) -> np.ndarray:
    squares = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if a in squares else -1 for a in range(1, q)])
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx].astype(np.float64)


def _paley(order: int) -> np.ndarray | None:
    q = order - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I
        s = np.zeros((order, order))
        s[0, 1:], s[1:, 0] = 1, -1
        s[1:, 1:] = _jacobsthal(q)
        return s + np.eye(order)
    q = order // 2 - 1
    if order % 2 == 0 and _is_prime(q) and q % 4 == 1:  # Paley II
        c = np.zeros((q + 1, q + 1))
        c[0, 1:], c[1:, 0] = 1, 1
        c[1:, 1:] = _jacobsthal(q)
        plus, minus = np.array([[1, -1], [-1, -1]]), np.array([[1, 1], [1, -1]])
        return np.kron(c, plus) + np.kron(np.eye(q + 1), minus)
    return None


@lru_cache(maxsize=64)
def hadamard(order: int) -> np.ndarray | None:
    """An unnormalized ±1 Hadamard matrix of ``order``, or None if we cannot build one."""
    if order < 1:
        return None
    if order & (order - 1) == 0:
        return _sylvester(order)
    for power in (1, 2, 4, 8, 16, 32, 64):
        base = order // power
        if order % power == 0 and base > 2 and (h := _paley(base)) is not None:
            return np.kron(h, _sylvester(power))
    return None


@dataclass(frozen=True)
class RotationFactors:
    a: np.ndarray  # [m, m] orthogonal
    b: np.ndarray  # [p, p] orthogonal, p a power of two
    hadamard: bool

    @property
    def dense(self) -> np.ndarray:
        return np.kron(self.a, self.b)

    def transpose_times(self, w: np.ndarray) -> np.ndarray:
        """``Rᵀ @ w`` in float64 for ``w [n]`` or ``[n, N]``, through the factors: ``(Aᵀ ⊗ Bᵀ)
        w`` is ``Aᵀ`` across the ``m`` blocks of ``p`` rows after ``Bᵀ`` inside each block."""
        w = np.asarray(w, np.float64)
        m, p = self.a.shape[0], self.b.shape[0]
        cols = w.reshape(m * p, -1).shape[1]
        t = np.matmul(self.b.T, w.reshape(m, p, cols))
        return (self.a.T @ t.reshape(m, p * cols)).reshape(w.shape)

    def times(self, w: np.ndarray) -> np.ndarray:
        """``w @ R`` in float64 for ``w [..., n]``, through the factors (rows independent)."""
        w = np.asarray(w, np.float64)
        m, p = self.a.shape[0], self.b.shape[0]
        rows = w.reshape(-1, m, p) @ self.b  # B inside each block of p
        out = np.matmul(self.a.T, rows)  # Aᵀ across the m blocks
        return out.reshape(w.shape)


def rotation_factors(n: int, seed: int = 0) -> RotationFactors:
    """Orthogonal ``R = A ⊗ B`` of size ``n`` with the smallest constructible Hadamard ``A``."""
    if n < 1:
        raise ValueError(f"rotation size must be positive, got {n}")
    p = n & -n  # largest power of two dividing n
    odd = n // p
    candidates = [odd * 2**i for i in range(p.bit_length()) if odd * 2**i <= MAX_HADAMARD_FACTOR]
    a, found = None, False
    for m in candidates:
        h = hadamard(m)
        if h is not None:
            a, found = h / np.sqrt(m), True
            break
    if a is None:
        q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((odd, odd)))
        a = q * np.sign(np.diag(r))[None, :]
    # Balance the factor sizes (cost n·(m + p)) by moving powers of two from B into A.
    while 4 * a.shape[0] <= n // a.shape[0]:
        a = np.kron(a, _sylvester(2) / np.sqrt(2))
    p = n // a.shape[0]
    return RotationFactors(a, _sylvester(p) / np.sqrt(p), found)

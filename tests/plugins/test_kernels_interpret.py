"""Each Triton kernel matches its numpy reference on small shapes with ragged tails.

Without CUDA these run in Triton's interpreter (tests/plugins/conftest.py); with CUDA the same
cases run compiled on the GPU. Every case draws fresh random data and fills the output buffer's
memory with garbage first (``torch.empty``), so unwritten elements fail the comparison.
"""

import numpy as np
import pytest
import torch

from smoothrot.core.hadamard import rotation_factors
from smoothrot.core.int4 import Grouping, quantize_rtn
from smoothrot.plugins.gemm_config import DecodeConfig, PrefillConfig
from smoothrot.plugins.hadamard_kernel import hadamard_rotate
from smoothrot.plugins.int4_gemm import w4a16_gemm
from smoothrot.plugins.packing import pack_int4
from smoothrot.plugins.reference import kronecker_hadamard, w4a8_matmul, w4a16_matmul
from smoothrot.plugins.w4a8_gemm import w4a8_gemm

RNG = np.random.default_rng(0)
PER_OC, PER_IC = Grouping.PER_OC, Grouping.PER_IC
KERNELS = {"w4a16": (w4a16_gemm, w4a16_matmul), "w4a8": (w4a8_gemm, w4a8_matmul)}
# fp16 output rounds at ~3e-4 relative; float32 output leaves only summation-order rounding.
# A wrong scale axis or a dropped tail is off by > 1e-1 (test_the_tolerance_catches_...).
TOLERANCE = {torch.float16: 2e-3, torch.float32: 2e-5}

# (grouping, M, K, N, group, config): tails are ragged against every tile size.
DECODE_CASES = [
    # 5 K-groups over 4 splits of 64 rows: the last split is empty; N tail of 8 columns
    (PER_OC, 3, 160, 72, 32, DecodeConfig(block_k=32, block_n=32, split_k=4)),
    # per channel (one group spans K): K tail of 4 rows inside a tile
    (PER_OC, 1, 100, 40, 100, DecodeConfig(block_k=32, block_n=16, split_k=2, acc_2d=False)),
    # K tail of 4 rows; two column groups per row
    (PER_IC, 2, 100, 64, 32, DecodeConfig(block_k=32, block_n=32, split_k=2)),
    # per channel (one group spans N): N tail of 4 columns
    (PER_IC, 1, 64, 100, 100, DecodeConfig(block_k=16, block_n=32, split_k=1, acc_2d=False)),
]
PREFILL_CASES = [
    (PER_OC, 37, 96, 72, 32, PrefillConfig(block_m=16, block_n=32, block_k=32)),
    (PER_OC, 21, 100, 40, 100, PrefillConfig(block_m=16, block_n=16, block_k=32)),
    (PER_IC, 37, 100, 64, 32, PrefillConfig(block_m=32, block_n=32, block_k=16)),
    (PER_IC, 18, 64, 100, 100, PrefillConfig(block_m=16, block_n=64, block_k=32)),
]


def _layer(grouping: Grouping, k: int, n: int, group: int, device: torch.device):
    b = RNG.standard_normal((k, n)).astype(np.float32) * np.exp(RNG.standard_normal((k, 1)))
    qw = quantize_rtn(b.astype(np.float32), grouping, group)
    packed = torch.from_numpy(pack_int4(qw.q)).to(device)
    return qw, packed, torch.from_numpy(qw.scale).to(device)


def _check(kernel_name, case, dtype, device, scale_transform=None):
    grouping, m, k, n, group, config = case
    kernel, reference = KERNELS[kernel_name]
    qw, packed, scale = _layer(grouping, k, n, group, device)
    x = torch.from_numpy(RNG.standard_normal((m, k)) * 2).to(device, dtype)
    x_ref = x.float().cpu().numpy()
    expected = reference(x_ref, qw.q, qw.scale, grouping, group)
    if scale_transform is not None:
        scale = scale_transform(scale)
    got = kernel(x, packed, scale, grouping, group, config=config).float().cpu().numpy()
    assert got.shape == (m, n)
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: f"{c[0].value}-{c[1]}x{c[2]}x{c[3]}")
@pytest.mark.parametrize("kernel_name", list(KERNELS))
def test_decode_kernel_matches_reference(kernel_name, case, device):
    dtype = torch.float16 if case[0] is PER_OC else torch.float32
    assert _check(kernel_name, case, dtype, device) < TOLERANCE[dtype]


@pytest.mark.parametrize("case", PREFILL_CASES, ids=lambda c: f"{c[0].value}-{c[1]}x{c[2]}x{c[3]}")
@pytest.mark.parametrize("kernel_name", list(KERNELS))
def test_prefill_kernel_matches_reference(kernel_name, case, device):
    dtype = torch.float32 if case[0] is PER_OC else torch.float16
    assert _check(kernel_name, case, dtype, device) < TOLERANCE[dtype]


@pytest.mark.parametrize("m", [1, 9])
def test_default_configs_and_leading_dims(m, device):
    qw, packed, scale = _layer(PER_IC, 64, 96, 32, device)
    x = torch.from_numpy(RNG.standard_normal((1, m, 64))).to(device, torch.float16)
    got = w4a16_gemm(x, packed, scale, PER_IC, 32, out_dtype=torch.float32)
    assert got.shape == (1, m, 96) and got.dtype == torch.float32
    expected = w4a16_matmul(x.float().cpu().numpy(), qw.q, qw.scale, PER_IC, 32)
    err = np.linalg.norm(got.cpu().numpy() - expected) / np.linalg.norm(expected)
    assert err < TOLERANCE[torch.float16]  # fp16 operands (the prefill kernel for m = 9)


def test_fp16_scales(device):
    """fp16 scales (what an fp16 TensorRT engine may carry) read as their fp16 values."""
    qw, packed, scale = _layer(PER_OC, 64, 48, 32, device)
    x = torch.from_numpy(RNG.standard_normal((1, 64))).to(device, torch.float32)
    half = qw.scale.astype(np.float16).astype(np.float32)
    expected = w4a16_matmul(x.cpu().numpy(), qw.q, half, PER_OC, 32)
    got = w4a16_gemm(x, packed, scale.half(), PER_OC, 32).cpu().numpy()
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 2e-5


def test_w4a8_rounds_ties_to_even(device):
    qw, packed, scale = _layer(PER_OC, 64, 32, 32, device)
    row = np.zeros(64, np.float32)
    row[:8] = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -126.5]  # scale 1, every x/s a tie
    x = torch.from_numpy(np.stack([row, -row]))
    expected = w4a8_matmul(row[None], qw.q, qw.scale, PER_OC, 32)[0]
    for config in (DecodeConfig(32, 32, 1), PrefillConfig(16, 32, 32)):
        got = w4a8_gemm(x.to(device), packed, scale, PER_OC, 32, config=config).cpu().numpy()
        np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[1], -expected, rtol=1e-5, atol=1e-5)


def test_the_tolerance_catches_a_wrong_scale_axis(device):
    """Per-IC scales of a square layer read as if transposed must fail the comparison."""
    case = (PER_IC, 2, 64, 64, 32, DecodeConfig(block_k=32, block_n=32, split_k=2))
    err = _check("w4a16", case, torch.float32, device, lambda s: s.flip(0).contiguous())
    assert err > 0.1


@pytest.mark.parametrize("n", [40, 96, 576])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_hadamard_kernel_matches_reference(n, dtype, device):
    f = rotation_factors(n)
    x = torch.from_numpy(RNG.standard_normal((2, 3, n))).to(device, dtype)
    a = torch.from_numpy(f.a.astype(np.float32)).to(device)
    b = torch.from_numpy(f.b.astype(np.float32)).to(device)
    got = hadamard_rotate(x, a, b).float().cpu().numpy()
    expected = kronecker_hadamard(x.float().cpu().numpy(), f.a, f.b)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < TOLERANCE[dtype]


def test_hadamard_kernel_takes_any_orthogonal_factors(device):
    q, _ = np.linalg.qr(RNG.standard_normal((12, 12)))  # what rotation_factors falls back to
    b = rotation_factors(16).dense  # 16 × 16
    x = torch.from_numpy(RNG.standard_normal((5, 192)).astype(np.float32)).to(device)
    a_t, b_t = (torch.from_numpy(v.astype(np.float32)).to(device) for v in (q, b))
    got = hadamard_rotate(x, a_t, b_t, out_dtype=torch.float32).cpu().numpy()
    np.testing.assert_allclose(got, kronecker_hadamard(x.cpu().numpy(), q, b), atol=2e-5)


def test_bad_inputs_are_value_errors(device):
    qw, packed, scale = _layer(PER_OC, 64, 32, 32, device)
    x = torch.zeros((1, 64), device=device)
    with pytest.raises(ValueError, match="must be"):
        w4a16_gemm(x, packed, scale.t().contiguous(), PER_OC, 32)
    with pytest.raises(ValueError, match="does not match"):
        w4a16_gemm(torch.zeros((1, 63), device=device), packed, scale, PER_OC, 32)
    with pytest.raises(ValueError, match="int8"):
        w4a16_gemm(x, packed.to(torch.int16), scale, PER_OC, 32)
    with pytest.raises(ValueError, match="multiple of block_k"):
        w4a16_gemm(x, packed, scale, PER_OC, 32, config=DecodeConfig(64, 32, 1))
    with pytest.raises(ValueError, match="power of two"):
        DecodeConfig(48, 32, 1)
    with pytest.raises(ValueError, match="square"):
        hadamard_rotate(x, torch.eye(8, device=device), torch.ones((8, 4), device=device))

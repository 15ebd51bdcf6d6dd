"""The kernels compiled for a real GPU: LLM-sized shapes, split-K counters, determinism."""

import numpy as np
import pytest
import torch

from smoothrot.core.hadamard import rotation_factors
from smoothrot.core.int4 import Grouping, fit_group_size, quantize_rtn
from smoothrot.plugins.gemm_config import DecodeConfig
from smoothrot.plugins.hadamard_kernel import hadamard_rotate
from smoothrot.plugins.int4_gemm import w4a16_gemm
from smoothrot.plugins.packing import pack_int4
from smoothrot.plugins.reference import kronecker_hadamard, w4a8_matmul, w4a16_matmul
from smoothrot.plugins.w4a8_gemm import w4a8_gemm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)"),
]
RNG = np.random.default_rng(0)
KERNELS = {"w4a16": (w4a16_gemm, w4a16_matmul), "w4a8": (w4a8_gemm, w4a8_matmul)}


def _layer(grouping: Grouping, k: int, n: int, group: int):
    b = (RNG.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    qw = quantize_rtn(b, grouping, group)
    return qw, torch.from_numpy(pack_int4(qw.q)).cuda(), torch.from_numpy(qw.scale).cuda()


def _rel(got: torch.Tensor, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got.float().cpu().numpy() - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("kernel_name", list(KERNELS))
@pytest.mark.parametrize("grouping", list(Grouping))
@pytest.mark.parametrize(("m", "k", "n"), [(1, 4096, 4096), (3, 576, 1536), (200, 1536, 576)])
def test_llm_shapes_match_reference(kernel_name, grouping, m, k, n):
    kernel, reference = KERNELS[kernel_name]
    group = fit_group_size((k, n)[grouping.axis], 128)
    qw, packed, scale = _layer(grouping, k, n, group)
    x = torch.randn((m, k), device="cuda", dtype=torch.float16)
    expected = reference(x.float().cpu().numpy(), qw.q, qw.scale, grouping, group)
    assert _rel(kernel(x, packed, scale, grouping, group), expected) < 2e-3
    got32 = kernel(x, packed, scale, grouping, group, out_dtype=torch.float32)
    limit = 2e-3 if m > 4 else 2e-5  # prefill: fp16 operands; decode: float32 throughout
    if kernel_name == "w4a8" and grouping is Grouping.PER_OC:
        limit = 2e-5  # integer operands: exact in the fp16 dot too
    assert _rel(got32, expected) < limit


def test_split_k_is_deterministic_and_counters_reset():
    qw, packed, scale = _layer(Grouping.PER_OC, 2048, 1024, 128)
    x = torch.randn((2, 2048), device="cuda", dtype=torch.float16)
    expected = w4a16_matmul(x.float().cpu().numpy(), qw.q, qw.scale, Grouping.PER_OC, 128)
    outs = []
    for split_k in (16, 4, 16, 1, 16):  # different grids share the workspace counters
        config = DecodeConfig(block_k=64, block_n=128, split_k=split_k)
        y = w4a16_gemm(x, packed, scale, Grouping.PER_OC, 128, torch.float32, config)
        assert _rel(y, expected) < 2e-5
        if split_k == 16:
            outs.append(y)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_hadamard_4096():
    f = rotation_factors(4096)
    x = torch.randn((7, 4096), device="cuda", dtype=torch.float16)
    a, b = (torch.from_numpy(v.astype(np.float32)).cuda() for v in (f.a, f.b))
    expected = kronecker_hadamard(x.float().cpu().numpy(), f.a, f.b)
    assert _rel(hadamard_rotate(x, a, b, out_dtype=torch.float32), expected) < 1e-5

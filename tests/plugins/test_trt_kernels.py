"""The plugin kernels, launched exactly as TensorRT launches them, match the numpy reference;
their PTX has TensorRT's AOT calling convention.

Each launch takes its arguments in TensorRT's order (inputs, the plan's extra i32 arguments,
outputs), its grid from the plan (as ``aot_impl`` hands it to TensorRT) and its constexprs from
the plan (as baked into the PTX). Without CUDA they run in Triton's interpreter
(tests/plugins/conftest.py); outputs start as garbage (``torch.empty``), so a grid that misses a
tile fails. The PTX is compiled in child processes (the interpreter cannot compile).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from smoothrot.core.hadamard import rotation_factors
from smoothrot.core.int4 import Grouping, quantize_rtn
from smoothrot.plugins.packing import pack_int4
from smoothrot.plugins.reference import kronecker_hadamard, w4a8_matmul, w4a16_matmul
from smoothrot.plugins.trt_kernels import KERNELS, entry_params
from smoothrot.plugins.trt_spec import (
    SHARED_LIMIT,
    ActType,
    GemmAttrs,
    HadamardAttrs,
    LaunchPlan,
    PluginOp,
    Tactic,
    gemm_plan,
    hadamard_plan,
)

RNG = np.random.default_rng(0)
PER_OC, PER_IC = Grouping.PER_OC, Grouping.PER_IC
REFERENCE = {PluginOp.W4A16_GEMM: w4a16_matmul, PluginOp.W4A8_GEMM: w4a8_matmul}
TOLERANCE = {ActType.FP16: 2e-3, ActType.FP32: 2e-5}  # relative norm, as test_kernels_interpret
TORCH = {ActType.FP16: torch.float16, ActType.FP32: torch.float32}
# (grouping, K, N, group): ragged against every tile; one group spanning the whole dimension.
SHAPES = [
    (PER_OC, 96, 72, 32),
    (PER_OC, 100, 40, 100),
    (PER_IC, 100, 64, 32),
    (PER_IC, 64, 100, 100),
]
ROWS = {Tactic.DECODE: 3, Tactic.PREFILL: 37}


def _launch(plan: LaunchPlan, inputs: list[torch.Tensor], out: torch.Tensor, rows: int) -> None:
    """``kernel[grid](*inputs, *extra_args, *outputs)`` with the plan's constexprs."""
    kernel = KERNELS[plan.kernel]
    kernel[plan.grid(rows)](
        *inputs, *plan.extra_args(rows), out, **dict(plan.constexprs),
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )  # fmt: skip


def _rel(got: torch.Tensor, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got.float().cpu().numpy() - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("act", list(ActType), ids=lambda a: a.value)
@pytest.mark.parametrize("tactic", list(Tactic), ids=lambda t: t.name.lower())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0].value}-{s[1]}x{s[2]}-g{s[3]}")
@pytest.mark.parametrize("op", [PluginOp.W4A16_GEMM, PluginOp.W4A8_GEMM], ids=lambda o: o.value)
def test_gemm_plugin_kernel_matches_reference(op, shape, tactic, act, device):
    grouping, k, n, group = shape
    plan = gemm_plan(op, GemmAttrs(k, n, grouping, group), act, tactic)
    b = RNG.standard_normal((k, n)) * np.exp(RNG.standard_normal((k, 1)))
    qw = quantize_rtn(b.astype(np.float32), grouping, group)
    rows = ROWS[tactic]
    x = torch.from_numpy(RNG.standard_normal((1, rows, k)) * 2).to(device, TORCH[act])
    packed = torch.from_numpy(pack_int4(qw.q)).to(device)
    scale = torch.from_numpy(qw.scale).to(device)
    y = torch.empty((1, rows, n), dtype=TORCH[act], device=device)
    _launch(plan, [x, packed, scale], y, rows)
    expected = REFERENCE[op](x.float().cpu().numpy(), qw.q, qw.scale, grouping, group)
    assert _rel(y, expected) < TOLERANCE[act]


@pytest.mark.parametrize("act", list(ActType), ids=lambda a: a.value)
@pytest.mark.parametrize("n", [96, 64])  # 96 = 12 x 8 (Paley factor), 64 = 8 x 8
def test_hadamard_plugin_kernel_matches_reference(n, act, device):
    f = rotation_factors(n, seed=0)
    plan = hadamard_plan(HadamardAttrs(f.a.shape[0], f.b.shape[0]), act)
    rows = 5
    x = torch.from_numpy(RNG.standard_normal((1, rows, n))).to(device, TORCH[act])
    a, b = (torch.from_numpy(v.astype(np.float32)).to(device) for v in (f.a, f.b))
    y = torch.empty_like(x)
    _launch(plan, [x, a, b], y, rows)
    expected = kronecker_hadamard(x.float().cpu().numpy(), f.a, f.b)
    assert _rel(y, expected) < TOLERANCE[act]


def test_the_tolerance_catches_a_wrong_scale(device):
    """The checks above can fail: a kernel reading scales off by a factor is far outside them."""
    plan = gemm_plan(
        PluginOp.W4A16_GEMM, GemmAttrs(64, 32, PER_OC, 32), ActType.FP32, Tactic.DECODE
    )
    qw = quantize_rtn(RNG.standard_normal((64, 32)).astype(np.float32), PER_OC, 32)
    x = torch.from_numpy(RNG.standard_normal((1, 2, 64))).to(device, torch.float32)
    packed = torch.from_numpy(pack_int4(qw.q)).to(device)
    scale = torch.from_numpy(qw.scale * 2).to(device)
    y = torch.empty((1, 2, 32), dtype=torch.float32, device=device)
    _launch(plan, [x, packed, scale], y, 2)
    expected = w4a16_matmul(x.cpu().numpy(), qw.q, qw.scale, PER_OC, 32)
    assert _rel(y, expected) > 0.5


@pytest.fixture(scope="module")
def ptx_records() -> list[dict]:
    """PTX of sample plugin instances for sm_80 and sm_90, fp16 and fp32, from child processes
    (this one may hold interpreter-built kernels), one per architecture."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "smoothrot.plugins.trt_kernels", "--json", "--act"]
    children = [
        subprocess.Popen(
            [*command, "fp16", "fp32", "--arch", str(arch)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for arch in (80, 90)
    ]
    records = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-3000:]
        records += json.loads(out.strip().splitlines()[-1])
    return records


def test_ptx_follows_tensorrt_aot_calling_convention(ptx_records):
    """Entry parameters: input pointers, one u32 (M) for GEMMs, the output pointer, then the two
    scratch pointers Triton 3.9 appends (TensorRT passes null; the kernels need no scratch)."""
    gemm = ["u64", "u64", "u64", "u32", "u64"]
    hadamard = ["u64", "u64", "u64", "u64"]
    assert len(ptx_records) == 2 * 2 * 9  # arch x act x (8 GEMM plans + 1 Hadamard)
    for r in ptx_records:
        expected = hadamard if r["kernel"] == "hadamard" else gemm
        assert r["params"] == expected + ["u64", "u64"], r
        assert r["scratch_bytes"] == 0, r
        assert r["shared_bytes"] <= SHARED_LIMIT, r
        assert r["ptx_reqntid"], r  # the block size the plan launches is the one compiled for
        assert r["target"].startswith(f"sm_{r['arch']}"), r
        assert r["name"] == KERNELS[r["kernel"]].fn.__name__


def test_entry_params_parses_an_entry():
    ptx = ".entry k(\n\t.param .u64 .ptr .global .align 1 k_param_0,\n\t.param .u32 k_param_1\n)"
    assert entry_params(ptx, "k") == ["u64", "u32"]
    with pytest.raises(ValueError, match="no .entry other"):
        entry_params(ptx, "other")
